//! Kerberos encryption and checksums (the RFC 3961 framework) for the etypes the gateway meets.
//!
//! | etype | name                        | spec     | mandatory checksum |
//! |-------|-----------------------------|----------|--------------------|
//! | 20    | aes256-cts-hmac-sha384-192  | RFC 8009 | 20                 |
//! | 18    | aes256-cts-hmac-sha1-96     | RFC 3962 | 16                 |
//! | 19    | aes128-cts-hmac-sha256-128  | RFC 8009 | 19                 |
//! | 17    | aes128-cts-hmac-sha1-96     | RFC 3962 | 15                 |
//! | 23    | rc4-hmac                    | RFC 4757 | -138 (HMAC-MD5)    |
//!
//! RC4 is here because Active Directory and Samba AD still issue RC4 tickets for accounts that
//! have no AES keys; DES and 3DES are not, as no supported KDC issues them any more.
//!
//! ```
//! use kcd_client::crypto::{EncType, Key};
//!
//! let key = Key::from_password(EncType::Aes256CtsHmacSha196, "secret", "TEST.LOCALalice", None)?;
//! let sealed = key.encrypt(3, b"the AS-REP's encrypted part");
//! assert_eq!(key.decrypt(3, &sealed)?, b"the AS-REP's encrypted part");
//! // The wrong key usage fails the integrity check rather than returning garbage.
//! assert!(key.decrypt(8, &sealed).is_err());
//! # Ok::<(), kcd_client::crypto::CryptoError>(())
//! ```
//!
//! # Why not `picky-krb`
//!
//! `picky-krb` 0.13's crypto module was evaluated first. It implements the AES-SHA1 etypes (and
//! 3DES) but neither RFC 8009's AES-SHA2 etypes nor RC4-HMAC, which Samba AD issues; its
//! `Cipher` trait hands out boxed trait objects over raw `&[u8]` keys, with no key type to
//! zeroize or to keep an etype with its bytes; and it pulls in its whole ASN.1/X.509 stack
//! (`picky-asn1-x509`, `crypto-bigint`, `des`, `uuid`) while this crate's messages use `rasn`.
//! The cipher modes are a few hundred lines over RustCrypto primitives (`aes`, `hmac`, `sha1`,
//! `sha2`, `pbkdf2`, `md4`, `md-5`, `rc4`), each checked below against the RFCs' test vectors and
//! against ciphertexts and checksums from MIT krb5's own test suite.
//!
//! # Hostile input
//!
//! Decryption and checksum verification never panic: short ciphertexts are
//! [`CryptoError::CiphertextTooShort`], and any tampering, wrong key or wrong usage is
//! [`CryptoError::IntegrityCheckFailed`], decided by a constant-time comparison. Keys and derived
//! keys are wiped from memory when dropped.

mod aes_cts;
mod aes_sha1;
mod aes_sha2;
mod nfold;
mod rc4_hmac;

use std::fmt;

use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use aes_cts::AesKey;
use aes_sha2::Profile;

/// RFC 3961 §5.3 derivation constants: the last byte of the usage label for each derived key.
const KEY_USAGE_CHECKSUM: u8 = 0x99;
const KEY_USAGE_ENCRYPTION: u8 = 0xAA;
const KEY_USAGE_INTEGRITY: u8 = 0x55;

/// Largest PBKDF2 iteration count accepted from string-to-key parameters.
///
/// The parameters come from the KDC's ETYPE-INFO2, unauthenticated; RFC 3962 §8 warns that a
/// spoofed huge count is a denial of service. MIT krb5 uses the same bound (2^24).
pub const MAX_ITERATIONS: u32 = 1 << 24;

/// A Kerberos encryption type this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncType {
    /// aes128-cts-hmac-sha1-96 (17, RFC 3962).
    Aes128CtsHmacSha196,
    /// aes256-cts-hmac-sha1-96 (18, RFC 3962).
    Aes256CtsHmacSha196,
    /// aes128-cts-hmac-sha256-128 (19, RFC 8009).
    Aes128CtsHmacSha256128,
    /// aes256-cts-hmac-sha384-192 (20, RFC 8009).
    Aes256CtsHmacSha384192,
    /// rc4-hmac, also called arcfour-hmac-md5 (23, RFC 4757).
    Rc4Hmac,
}

impl EncType {
    /// Strongest first: [20, 18, 19, 17, 23] — the order the client offers in AS-REQ/TGS-REQ.
    ///
    /// AES-256 with SHA-1 comes before AES-128 with SHA-2 because Active Directory does not
    /// implement RFC 8009: against AD the offer is effectively 18, 17, 23.
    pub const PREFERRED: &'static [EncType] = &[
        EncType::Aes256CtsHmacSha384192,
        EncType::Aes256CtsHmacSha196,
        EncType::Aes128CtsHmacSha256128,
        EncType::Aes128CtsHmacSha196,
        EncType::Rc4Hmac,
    ];

    /// The etype for an IANA etype number, or `None` if this crate does not implement it.
    pub fn from_i32(v: i32) -> Option<EncType> {
        match v {
            17 => Some(EncType::Aes128CtsHmacSha196),
            18 => Some(EncType::Aes256CtsHmacSha196),
            19 => Some(EncType::Aes128CtsHmacSha256128),
            20 => Some(EncType::Aes256CtsHmacSha384192),
            23 => Some(EncType::Rc4Hmac),
            _ => None,
        }
    }

    /// The IANA etype number.
    pub fn as_i32(self) -> i32 {
        match self {
            EncType::Aes128CtsHmacSha196 => 17,
            EncType::Aes256CtsHmacSha196 => 18,
            EncType::Aes128CtsHmacSha256128 => 19,
            EncType::Aes256CtsHmacSha384192 => 20,
            EncType::Rc4Hmac => 23,
        }
    }

    /// Length of the protocol key, in bytes.
    pub fn key_len(self) -> usize {
        match self {
            EncType::Aes128CtsHmacSha196 | EncType::Aes128CtsHmacSha256128 | EncType::Rc4Hmac => 16,
            EncType::Aes256CtsHmacSha196 | EncType::Aes256CtsHmacSha384192 => 32,
        }
    }

    /// The etype's mandatory keyed checksum type: 15, 16, 19, 20, or -138 for RC4.
    pub fn checksum_type(self) -> i32 {
        match self {
            EncType::Aes128CtsHmacSha196 => Checksum::HMAC_SHA1_96_AES128,
            EncType::Aes256CtsHmacSha196 => Checksum::HMAC_SHA1_96_AES256,
            EncType::Aes128CtsHmacSha256128 => Checksum::HMAC_SHA256_128_AES128,
            EncType::Aes256CtsHmacSha384192 => Checksum::HMAC_SHA384_192_AES256,
            EncType::Rc4Hmac => Checksum::HMAC_MD5,
        }
    }

    /// The name MIT krb5 and `ktutil` use, e.g. `aes256-cts-hmac-sha1-96`.
    pub fn name(self) -> &'static str {
        match self {
            EncType::Aes128CtsHmacSha196 => "aes128-cts-hmac-sha1-96",
            EncType::Aes256CtsHmacSha196 => "aes256-cts-hmac-sha1-96",
            EncType::Aes128CtsHmacSha256128 => "aes128-cts-hmac-sha256-128",
            EncType::Aes256CtsHmacSha384192 => "aes256-cts-hmac-sha384-192",
            EncType::Rc4Hmac => "rc4-hmac",
        }
    }

    /// Bytes of random confounder in front of every plaintext.
    pub fn confounder_len(self) -> usize {
        match self {
            EncType::Rc4Hmac => rc4_hmac::CONFOUNDER_LEN,
            _ => aes_cts::BLOCK,
        }
    }
}

impl fmt::Display for EncType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an encryption, decryption or checksum operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The etype number is not one this crate implements.
    #[error("encryption type {0} is not supported")]
    UnsupportedEncType(i32),
    /// Key material of the wrong length for its etype.
    #[error("a {etype} key is {expected} bytes, not {actual}")]
    BadKeyLength {
        /// The key's etype.
        etype: EncType,
        /// The length the etype requires.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The ciphertext or checksum does not verify: wrong key, wrong key usage, or tampered data.
    #[error("integrity check failed: wrong key, wrong key usage or altered data")]
    IntegrityCheckFailed,
    /// The ciphertext is shorter than the confounder and checksum every message carries.
    #[error("ciphertext is too short to hold a confounder and a checksum")]
    CiphertextTooShort,
    /// The checksum type number is not one this crate implements.
    #[error("checksum type {0} is not supported")]
    UnsupportedChecksum(i32),
    /// A keyed checksum type that needs a key of another etype (e.g. type 16 with an AES-128 key).
    #[error("checksum type {cksumtype} cannot be computed with a {etype} key")]
    ChecksumKeyMismatch {
        /// The checksum type asked for.
        cksumtype: i32,
        /// The etype of the key given.
        etype: EncType,
    },
    /// A confounder of the wrong length was passed to [`Key::encrypt_with_confounder`].
    #[error("a {etype} confounder is {expected} bytes, not {actual}")]
    BadConfounderLength {
        /// The key's etype.
        etype: EncType,
        /// The length the etype requires.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// String-to-key parameters that are malformed or ask for an unreasonable iteration count.
    #[error("string-to-key parameters for {etype} are invalid")]
    BadS2kParams {
        /// The etype the key was being derived for.
        etype: EncType,
    },
}

/// A checksum as carried in a Kerberos `Checksum` (RFC 4120 §5.2.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The checksum type number, e.g. [`Checksum::HMAC_SHA1_96_AES256`].
    pub cksumtype: i32,
    /// The checksum bytes.
    pub value: Vec<u8>,
}

impl Checksum {
    /// hmac-sha1-96-aes128 (RFC 3962).
    pub const HMAC_SHA1_96_AES128: i32 = 15;
    /// hmac-sha1-96-aes256 (RFC 3962).
    pub const HMAC_SHA1_96_AES256: i32 = 16;
    /// hmac-sha256-128-aes128 (RFC 8009).
    pub const HMAC_SHA256_128_AES128: i32 = 19;
    /// hmac-sha384-192-aes256 (RFC 8009).
    pub const HMAC_SHA384_192_AES256: i32 = 20;
    /// KERB_CHECKSUM_HMAC_MD5 (RFC 4757 §4, MS-SFU 2.2.1).
    pub const HMAC_MD5: i32 = -138;
}

/// A [`Key`] made ready to encrypt many messages for one key usage ([`Key::sealing_key`]):
/// the usage's derived keys (RFC 3961's Ke and Ki, RFC 8009's) and Ke's AES key schedule are
/// made once instead of for every message. The gateway encrypts an AP-REQ authenticator in the
/// same ticket's session key for every Negotiate token it makes, and deriving the keys again
/// each time was about half of the encryption's cost. [`Key::encrypt`] is one of these, used
/// once.
///
/// The key material is wiped when it is dropped, and `Debug` shows only the etype and usage.
#[derive(Clone)]
pub struct SealingKey {
    usage: u32,
    prepared: Prepared,
}

#[derive(Clone)]
enum Prepared {
    AesSha1 {
        ke: AesKey,
        ki: Zeroizing<Vec<u8>>,
    },
    AesSha2 {
        profile: Profile,
        ke: AesKey,
        ki: Zeroizing<Vec<u8>>,
    },
    /// rc4-hmac, whose keys depend on each message.
    Rc4(Key),
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKey")
            .field("etype", &self.etype())
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl SealingKey {
    /// The key usage it encrypts for.
    pub fn usage(&self) -> u32 {
        self.usage
    }

    /// The key's etype.
    pub fn etype(&self) -> EncType {
        match &self.prepared {
            Prepared::AesSha1 { ke, .. } => match ke {
                AesKey::A128(_) => EncType::Aes128CtsHmacSha196,
                AesKey::A256(_) => EncType::Aes256CtsHmacSha196,
            },
            Prepared::AesSha2 { profile, .. } => match profile {
                Profile::Sha256 => EncType::Aes128CtsHmacSha256128,
                Profile::Sha384 => EncType::Aes256CtsHmacSha384192,
            },
            Prepared::Rc4(key) => key.etype,
        }
    }

    /// Encrypts `plaintext` with a random confounder, as [`Key::encrypt`] for this usage.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut confounder = Zeroizing::new(vec![0u8; self.etype().confounder_len()]);
        rand::rng().fill_bytes(&mut confounder);
        self.seal(&confounder, plaintext)
    }

    /// As [`Key::encrypt_with_confounder`]: only for reproducing test vectors.
    ///
    /// Errs with [`CryptoError::BadConfounderLength`] unless the confounder is
    /// [`EncType::confounder_len`] bytes.
    pub fn encrypt_with_confounder(
        &self,
        confounder: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let etype = self.etype();
        if confounder.len() != etype.confounder_len() {
            return Err(CryptoError::BadConfounderLength {
                etype,
                expected: etype.confounder_len(),
                actual: confounder.len(),
            });
        }
        Ok(self.seal(confounder, plaintext))
    }

    fn seal(&self, confounder: &[u8], plaintext: &[u8]) -> Vec<u8> {
        match &self.prepared {
            Prepared::AesSha1 { ke, ki } => aes_sha1::seal(ke, ki, confounder, plaintext),
            Prepared::AesSha2 { profile, ke, ki } => profile.seal(ke, ki, confounder, plaintext),
            Prepared::Rc4(key) => rc4_hmac::encrypt(&key.bytes, self.usage, confounder, plaintext),
        }
    }
}

/// A Kerberos protocol key: an etype and its key bytes.
///
/// The bytes are wiped when the key is dropped, and `Debug` shows only the etype.
#[derive(Clone)]
pub struct Key {
    etype: EncType,
    bytes: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("etype", &self.etype)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// Wraps raw key bytes (e.g. an `EncryptionKey` from a KDC reply or a keytab).
    ///
    /// Errs with [`CryptoError::BadKeyLength`] unless `bytes` is exactly
    /// [`EncType::key_len`] long.
    pub fn new(etype: EncType, bytes: &[u8]) -> Result<Key, CryptoError> {
        if bytes.len() != etype.key_len() {
            return Err(CryptoError::BadKeyLength {
                etype,
                expected: etype.key_len(),
                actual: bytes.len(),
            });
        }
        Ok(Key {
            etype,
            bytes: Zeroizing::new(bytes.to_vec()),
        })
    }

    /// Derives the long-term key of a password (string-to-key).
    ///
    /// - AES-SHA1 (RFC 3962): PBKDF2-HMAC-SHA1 over `salt`; `s2kparams` is the 4-byte big-endian
    ///   iteration count, 4096 by default.
    /// - AES-SHA2 (RFC 8009): PBKDF2-HMAC-SHA256/384 over `"<enctype name>\0" + salt`;
    ///   32768 iterations by default.
    /// - RC4 (RFC 4757): MD4 of the UTF-16LE password; the salt is ignored and `s2kparams` must be
    ///   absent or empty.
    ///
    /// The default salt of a principal is the realm followed by its components, e.g.
    /// `"TEST.LOCALalice"`; the KDC may announce another in ETYPE-INFO2. Errs with
    /// [`CryptoError::BadS2kParams`] for parameters that are not 4 bytes or whose iteration count
    /// is 0 or above [`MAX_ITERATIONS`].
    pub fn from_password(
        etype: EncType,
        password: &str,
        salt: &str,
        s2kparams: Option<&[u8]>,
    ) -> Result<Key, CryptoError> {
        let bytes = match etype {
            EncType::Rc4Hmac => {
                if s2kparams.is_some_and(|p| !p.is_empty()) {
                    return Err(CryptoError::BadS2kParams { etype });
                }
                rc4_hmac::string_to_key(password)
            }
            EncType::Aes128CtsHmacSha196 | EncType::Aes256CtsHmacSha196 => {
                let iterations = iteration_count(etype, s2kparams, 4096)?;
                aes_sha1::string_to_key(
                    password.as_bytes(),
                    salt.as_bytes(),
                    iterations,
                    etype.key_len(),
                )
            }
            EncType::Aes128CtsHmacSha256128 | EncType::Aes256CtsHmacSha384192 => {
                let iterations = iteration_count(etype, s2kparams, 32768)?;
                let Some(profile) = Profile::for_etype(etype) else {
                    return Err(CryptoError::UnsupportedEncType(etype.as_i32()));
                };
                profile.string_to_key(password.as_bytes(), salt.as_bytes(), iterations)
            }
        };
        Ok(Key { etype, bytes })
    }

    /// A fresh random key (e.g. an authenticator subkey), from the thread's CSPRNG.
    pub fn random(etype: EncType) -> Key {
        let mut bytes = Zeroizing::new(vec![0u8; etype.key_len()]);
        // For every etype here random-to-key is the identity on key_len random bytes.
        rand::rng().fill_bytes(&mut bytes);
        Key { etype, bytes }
    }

    /// The key's etype.
    pub fn etype(&self) -> EncType {
        self.etype
    }

    /// The raw key bytes, e.g. to put in an `EncryptionKey` or a keytab.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Encrypts `plaintext` for key usage `usage` (RFC 4120 §7.5.1) with a random confounder.
    /// For many messages under one usage, [`Key::sealing_key`] derives the usage's keys once.
    pub fn encrypt(&self, usage: u32, plaintext: &[u8]) -> Vec<u8> {
        self.sealing_key(usage).encrypt(plaintext)
    }

    /// This key made ready to encrypt many messages for key usage `usage`; see [`SealingKey`].
    pub fn sealing_key(&self, usage: u32) -> SealingKey {
        let prepared = match self.etype {
            EncType::Aes128CtsHmacSha196 | EncType::Aes256CtsHmacSha196 => {
                aes_sha1::prepare(&self.bytes, usage).map(|(ke, ki)| Prepared::AesSha1 { ke, ki })
            }
            EncType::Aes128CtsHmacSha256128 | EncType::Aes256CtsHmacSha384192 => {
                Profile::for_etype(self.etype).and_then(|profile| {
                    profile
                        .prepare(&self.bytes, usage)
                        .map(|(ke, ki)| Prepared::AesSha2 { profile, ke, ki })
                })
            }
            // RC4 derives its keys from each message's checksum: nothing to prepare.
            EncType::Rc4Hmac => None,
        };
        SealingKey {
            usage,
            // `Key` guarantees each AES etype's key length, so preparing them cannot fail.
            prepared: prepared.unwrap_or_else(|| Prepared::Rc4(self.clone())),
        }
    }

    /// Encrypts with a given confounder instead of a random one: only for reproducing test
    /// vectors, since a repeated confounder weakens the encryption.
    ///
    /// Errs with [`CryptoError::BadConfounderLength`] unless the confounder is
    /// [`EncType::confounder_len`] bytes.
    pub fn encrypt_with_confounder(
        &self,
        usage: u32,
        confounder: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.sealing_key(usage)
            .encrypt_with_confounder(confounder, plaintext)
    }

    /// Decrypts and verifies a ciphertext made for key usage `usage`, returning the plaintext
    /// without its confounder.
    ///
    /// Errs with [`CryptoError::CiphertextTooShort`] if it cannot hold a confounder and checksum,
    /// and [`CryptoError::IntegrityCheckFailed`] for a wrong key, wrong usage or altered bytes.
    pub fn decrypt(&self, usage: u32, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self.etype {
            EncType::Aes128CtsHmacSha196 | EncType::Aes256CtsHmacSha196 => {
                aes_sha1::decrypt(&self.bytes, usage, ciphertext)
            }
            EncType::Aes128CtsHmacSha256128 => {
                Profile::Sha256.decrypt(&self.bytes, usage, ciphertext)
            }
            EncType::Aes256CtsHmacSha384192 => {
                Profile::Sha384.decrypt(&self.bytes, usage, ciphertext)
            }
            EncType::Rc4Hmac => rc4_hmac::decrypt(&self.bytes, usage, ciphertext),
        }
    }

    /// The etype's mandatory keyed checksum ([`EncType::checksum_type`]) of `data` for key usage
    /// `usage`.
    pub fn checksum(&self, usage: u32, data: &[u8]) -> Checksum {
        let cksumtype = self.etype.checksum_type();
        Checksum {
            cksumtype,
            value: self
                .checksum_value(cksumtype, usage, data)
                .unwrap_or_default(),
        }
    }

    /// The checksum of type `cksumtype`, if this key can compute it.
    fn checksum_value(
        &self,
        cksumtype: i32,
        usage: u32,
        data: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let needed = match cksumtype {
            Checksum::HMAC_MD5 => {
                return Ok(rc4_hmac::hmac_md5_checksum(&self.bytes, usage, data));
            }
            Checksum::HMAC_SHA1_96_AES128 => EncType::Aes128CtsHmacSha196,
            Checksum::HMAC_SHA1_96_AES256 => EncType::Aes256CtsHmacSha196,
            Checksum::HMAC_SHA256_128_AES128 => EncType::Aes128CtsHmacSha256128,
            Checksum::HMAC_SHA384_192_AES256 => EncType::Aes256CtsHmacSha384192,
            other => return Err(CryptoError::UnsupportedChecksum(other)),
        };
        if needed != self.etype {
            return Err(CryptoError::ChecksumKeyMismatch {
                cksumtype,
                etype: self.etype,
            });
        }
        Ok(match self.etype {
            EncType::Aes128CtsHmacSha196 | EncType::Aes256CtsHmacSha196 => {
                aes_sha1::checksum(&self.bytes, usage, data)
            }
            EncType::Aes128CtsHmacSha256128 => Profile::Sha256.checksum(&self.bytes, usage, data),
            EncType::Aes256CtsHmacSha384192 => Profile::Sha384.checksum(&self.bytes, usage, data),
            EncType::Rc4Hmac => rc4_hmac::hmac_md5_checksum(&self.bytes, usage, data),
        })
    }

    /// Verifies `checksum` over `data` for key usage `usage`, in constant time.
    ///
    /// Accepts checksum types 15, 16, 19 and 20 with a key of the matching etype, and -138
    /// (HMAC-MD5) with any key. Errs with [`CryptoError::UnsupportedChecksum`] for other types,
    /// [`CryptoError::ChecksumKeyMismatch`] for a key of the wrong etype, and
    /// [`CryptoError::IntegrityCheckFailed`] if the value does not match.
    pub fn verify_checksum(
        &self,
        usage: u32,
        data: &[u8],
        checksum: &Checksum,
    ) -> Result<(), CryptoError> {
        let expected = self.checksum_value(checksum.cksumtype, usage, data)?;
        // `ct_eq` on slices of different lengths is false without looking at the contents.
        if bool::from(expected.ct_eq(&checksum.value)) {
            Ok(())
        } else {
            Err(CryptoError::IntegrityCheckFailed)
        }
    }
}

/// KERB_CHECKSUM_HMAC_MD5 (cksumtype -138, RFC 4757 §4 / MS-SFU 2.2.1): the checksum PA-FOR-USER
/// requires whatever the session key's etype is (with an AES key it is computed with the raw key
/// bytes as the HMAC-MD5 key derivation input, exactly as RFC 4757 describes:
/// Ksign = HMAC-MD5(key, "signaturekey\0"), tmp = MD5(usage as 4-byte LE || data),
/// HMAC-MD5(Ksign, tmp)).
///
/// The usage passes through RC4's usage translation first (3 -> 8, 23 -> 13), as in MIT krb5 and
/// Heimdal; MS-SFU's usage 17 is unaffected.
pub fn hmac_md5_checksum(key: &Key, usage: u32, data: &[u8]) -> Checksum {
    Checksum {
        cksumtype: Checksum::HMAC_MD5,
        value: rc4_hmac::hmac_md5_checksum(&key.bytes, usage, data),
    }
}

/// The PBKDF2 iteration count from RFC 3962 / RFC 8009 string-to-key parameters.
fn iteration_count(
    etype: EncType,
    params: Option<&[u8]>,
    default: u32,
) -> Result<u32, CryptoError> {
    let Some(params) = params else {
        return Ok(default);
    };
    let bytes: [u8; 4] = params
        .try_into()
        .map_err(|_| CryptoError::BadS2kParams { etype })?;
    let count = u32::from_be_bytes(bytes);
    // RFC 3962 reads 0 as 2^32 iterations, which is as good as a denial of service.
    if count == 0 || count > MAX_ITERATIONS {
        return Err(CryptoError::BadS2kParams { etype });
    }
    Ok(count)
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes hex, ignoring whitespace; test vectors only.
    pub(crate) fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| {
                let s = std::str::from_utf8(pair).expect("ascii");
                u8::from_str_radix(s, 16).expect("hex digit")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::hex;
    use super::*;

    const ALL: [EncType; 5] = [
        EncType::Aes128CtsHmacSha196,
        EncType::Aes256CtsHmacSha196,
        EncType::Aes128CtsHmacSha256128,
        EncType::Aes256CtsHmacSha384192,
        EncType::Rc4Hmac,
    ];

    #[test]
    fn a_sealing_key_encrypts_for_its_usage_and_keeps_nothing_between_messages() {
        for etype in ALL {
            let key = Key::random(etype);
            let sealing = key.sealing_key(11);
            assert_eq!((sealing.etype(), sealing.usage()), (etype, 11));
            let confounder = vec![7u8; etype.confounder_len()];
            let plaintext = b"an authenticator of about a hundred bytes, longer than a block";
            // `Key::encrypt` is a sealing key used once; a prepared key used many times must
            // give the same bytes for the same message every time.
            let once = key
                .encrypt_with_confounder(11, &confounder, plaintext)
                .unwrap();
            for _ in 0..2 {
                assert_eq!(
                    sealing
                        .encrypt_with_confounder(&confounder, plaintext)
                        .unwrap(),
                    once,
                    "{etype:?}"
                );
            }
            // Decryption derives its keys itself: an independent check of the prepared ones.
            assert_eq!(key.decrypt(11, &once).unwrap(), plaintext, "{etype:?}");
            let sealed = sealing.encrypt(plaintext);
            assert_eq!(key.decrypt(11, &sealed).unwrap(), plaintext, "{etype:?}");
            // Made for usage 11, not for any other.
            assert!(key.decrypt(12, &sealed).is_err(), "{etype:?}");
            assert!(sealing.encrypt_with_confounder(&[0; 3], plaintext).is_err());
        }
    }

    #[test]
    fn etype_numbers_round_trip() {
        for etype in ALL {
            assert_eq!(EncType::from_i32(etype.as_i32()), Some(etype));
        }
        assert_eq!(EncType::from_i32(16), None);
        assert_eq!(EncType::from_i32(-1), None);
        let preferred: Vec<i32> = EncType::PREFERRED.iter().map(|e| e.as_i32()).collect();
        assert_eq!(preferred, [20, 18, 19, 17, 23]);
        let cksums: Vec<i32> = ALL.iter().map(|e| e.checksum_type()).collect();
        assert_eq!(cksums, [15, 16, 19, 20, -138]);
    }

    #[test]
    fn key_debug_shows_no_key_bytes() {
        let key = Key::new(EncType::Rc4Hmac, &[0xAB; 16]).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "Key { etype: Rc4Hmac, .. }");
    }

    #[test]
    fn key_of_wrong_length_is_refused() {
        assert!(matches!(
            Key::new(EncType::Aes256CtsHmacSha196, &[0; 16]),
            Err(CryptoError::BadKeyLength {
                expected: 32,
                actual: 16,
                ..
            })
        ));
    }

    #[test]
    fn every_etype_round_trips_every_length() {
        for etype in ALL {
            let key = Key::random(etype);
            for len in 0..=64u8 {
                let plain: Vec<u8> = (0..len).collect();
                let sealed = key.encrypt(7, &plain);
                assert_eq!(key.decrypt(7, &sealed).unwrap(), plain, "{etype} {len}");
            }
        }
    }

    #[test]
    fn tampered_truncated_or_misused_ciphertext_is_an_error() {
        for etype in ALL {
            let key = Key::random(etype);
            let sealed = key.encrypt(11, b"attack at dawn, or thereabouts");
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                assert!(
                    matches!(
                        key.decrypt(11, &bad),
                        Err(CryptoError::IntegrityCheckFailed)
                    ),
                    "{etype} flip byte {i}"
                );
            }
            for len in 0..sealed.len() {
                assert!(
                    key.decrypt(11, &sealed[..len]).is_err(),
                    "{etype} truncated to {len}"
                );
            }
            assert!(key.decrypt(12, &sealed).is_err(), "{etype} wrong usage");
            assert!(
                Key::random(etype).decrypt(11, &sealed).is_err(),
                "{etype} wrong key"
            );
        }
    }

    #[test]
    fn confounder_must_have_the_etype_length() {
        let key = Key::random(EncType::Aes128CtsHmacSha196);
        assert!(matches!(
            key.encrypt_with_confounder(1, &[0; 8], b"x"),
            Err(CryptoError::BadConfounderLength {
                expected: 16,
                actual: 8,
                ..
            })
        ));
    }

    #[test]
    fn rfc8009_vector_through_the_public_api() {
        let key = Key::new(
            EncType::Aes128CtsHmacSha256128,
            &hex("3705D96080C17728A0E800EAB6E0D23C"),
        )
        .unwrap();
        let sealed = key
            .encrypt_with_confounder(
                2,
                &hex("7BCA285E2FD4130FB55B1A5C83BC5B24"),
                &hex("000102030405"),
            )
            .unwrap();
        assert_eq!(
            sealed,
            hex("84D7F30754ED987BAB0BF3506BEB09CFB55402CEF7E6877CE99E247E52D16ED4421DFDF8976C")
        );
        // The same known answer from the key made ready for usage 2, twice: what it keeps
        // between messages does not change the next one.
        let sealing = key.sealing_key(2);
        for _ in 0..2 {
            assert_eq!(
                sealing
                    .encrypt_with_confounder(
                        &hex("7BCA285E2FD4130FB55B1A5C83BC5B24"),
                        &hex("000102030405"),
                    )
                    .unwrap(),
                sealed
            );
        }
        let cksum = key.checksum(2, &hex("000102030405060708090A0B0C0D0E0F1011121314"));
        assert_eq!(cksum.cksumtype, 19);
        assert_eq!(cksum.value, hex("D78367186643D67B411CBA9139FC1DEE"));
    }

    #[test]
    fn from_password_matches_rfc_vectors_and_params() {
        let k = Key::from_password(
            EncType::Aes256CtsHmacSha196,
            "password",
            "ATHENA.MIT.EDUraeburn",
            Some(&1200u32.to_be_bytes()),
        )
        .unwrap();
        assert_eq!(
            k.bytes(),
            hex("55a6ac740ad17b4846941051e1e8b0a7548d93b0ab30a8bc3ff16280382b8c2a")
        );
        let salt = "\u{10}\u{7DD}\u{5C3}\u{5F0A}\u{3A1}\u{73}\u{0E}\u{74}\u{35}\u{5F}\u{61}ATHENA.MIT.EDUraeburn";
        assert_eq!(
            salt.as_bytes(),
            hex("10DF9DD783E5BC8ACEA1730E74355F61415448454E412E4D49542E4544557261656275726E")
        );
        // RFC 8009's vector uses the default 32768 iterations.
        let k =
            Key::from_password(EncType::Aes128CtsHmacSha256128, "password", salt, None).unwrap();
        assert_eq!(k.bytes(), hex("089BCA48B105EA6EA77CA5D2F39DC5E7"));
        let k = Key::from_password(EncType::Rc4Hmac, "password", "ignored", None).unwrap();
        assert_eq!(k.bytes(), hex("8846F7EAEE8FB117AD06BDD830B7586C"));
    }

    #[test]
    fn hostile_s2k_params_are_refused() {
        for params in [
            &[][..],
            &[0, 0, 16],
            &[0, 0, 0, 0],
            &[0xff, 0xff, 0xff, 0xff],
            &[0, 0, 0, 1, 0],
        ] {
            assert!(
                matches!(
                    Key::from_password(EncType::Aes256CtsHmacSha196, "pw", "salt", Some(params)),
                    Err(CryptoError::BadS2kParams { .. })
                ),
                "{params:?}"
            );
        }
        assert!(Key::from_password(EncType::Rc4Hmac, "pw", "", Some(&[0, 0, 16, 0])).is_err());
    }

    #[test]
    fn checksums_verify_and_reject() {
        for etype in ALL {
            let key = Key::random(etype);
            let sum = key.checksum(6, b"authenticator checksum");
            assert_eq!(sum.cksumtype, etype.checksum_type());
            key.verify_checksum(6, b"authenticator checksum", &sum)
                .unwrap();
            assert!(matches!(
                key.verify_checksum(6, b"authenticator checksun", &sum),
                Err(CryptoError::IntegrityCheckFailed)
            ));
            assert!(
                key.verify_checksum(7, b"authenticator checksum", &sum)
                    .is_err()
            );
            let short = Checksum {
                cksumtype: sum.cksumtype,
                value: sum.value[1..].to_vec(),
            };
            assert!(
                key.verify_checksum(6, b"authenticator checksum", &short)
                    .is_err()
            );
            // HMAC-MD5 works with any key, as PA-FOR-USER needs.
            let md5 = hmac_md5_checksum(&key, 17, b"S4U2Self");
            key.verify_checksum(17, b"S4U2Self", &md5).unwrap();
        }
        let aes128 = Key::random(EncType::Aes128CtsHmacSha196);
        let sum16 = Checksum {
            cksumtype: 16,
            value: vec![0; 12],
        };
        assert!(matches!(
            aes128.verify_checksum(1, b"", &sum16),
            Err(CryptoError::ChecksumKeyMismatch { cksumtype: 16, .. })
        ));
        let crc = Checksum {
            cksumtype: 1,
            value: vec![0; 4],
        };
        assert!(matches!(
            aes128.verify_checksum(1, b"", &crc),
            Err(CryptoError::UnsupportedChecksum(1))
        ));
    }

    /// With an RC4 key, the etype's mandatory checksum is HMAC-MD5: MIT's t_cksums.c vector.
    #[test]
    fn rc4_mandatory_checksum_is_mit_hmac_md5() {
        let key = Key::new(EncType::Rc4Hmac, &hex("F7D3A155AF5E238A0B7A871A96BA2AB2")).unwrap();
        let sum = key.checksum(6, b"seventeen eighteen nineteen twenty");
        assert_eq!(
            sum,
            Checksum {
                cksumtype: -138,
                value: hex("EB38CC97E2230F59DA4117DC5859D7EC")
            }
        );
    }
}
