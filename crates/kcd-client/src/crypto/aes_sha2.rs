//! aes128-cts-hmac-sha256-128 and aes256-cts-hmac-sha384-192 (RFC 8009): AES-CTS with
//! encrypt-then-MAC, keys derived with the SP 800-108 counter-mode KDF over HMAC-SHA2.

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::aes_cts::{self, AesKey, BLOCK};
use super::{CryptoError, EncType, KEY_USAGE_CHECKSUM, KEY_USAGE_ENCRYPTION, KEY_USAGE_INTEGRITY};

/// The two RFC 8009 profiles differ only in hash and lengths.
#[derive(Clone, Copy)]
pub(crate) enum Profile {
    /// aes128-cts-hmac-sha256-128 (19).
    Sha256,
    /// aes256-cts-hmac-sha384-192 (20).
    Sha384,
}

impl Profile {
    pub(crate) fn for_etype(etype: EncType) -> Option<Profile> {
        match etype {
            EncType::Aes128CtsHmacSha256128 => Some(Profile::Sha256),
            EncType::Aes256CtsHmacSha384192 => Some(Profile::Sha384),
            _ => None,
        }
    }

    /// The enctype name that prefixes the salt (RFC 8009 §4).
    fn name(self) -> &'static str {
        match self {
            Profile::Sha256 => "aes128-cts-hmac-sha256-128",
            Profile::Sha384 => "aes256-cts-hmac-sha384-192",
        }
    }

    /// Protocol key and Ke length, in bytes.
    fn key_len(self) -> usize {
        match self {
            Profile::Sha256 => 16,
            Profile::Sha384 => 32,
        }
    }

    /// Ki, Kc and truncated-HMAC length `h`, in bytes.
    pub(crate) fn mac_len(self) -> usize {
        match self {
            Profile::Sha256 => 16,
            Profile::Sha384 => 24,
        }
    }

    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC accepts any key length");
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        Zeroizing::new(match self {
            Profile::Sha256 => run::<Hmac<Sha256>>(key, parts),
            Profile::Sha384 => run::<Hmac<Sha384>>(key, parts),
        })
    }

    /// KDF-HMAC-SHA2(key, label, k) of RFC 8009 §3 with an empty context: one round of the
    /// counter-mode KDF suffices because no output here is longer than the hash.
    fn kdf(self, key: &[u8], label: &[u8], out_len: usize) -> Zeroizing<Vec<u8>> {
        let bits = u32::try_from(out_len * 8).unwrap_or(u32::MAX).to_be_bytes();
        let mut out = self.hmac(key, &[&1u32.to_be_bytes(), label, &[0], &bits]);
        out.truncate(out_len);
        out
    }

    fn derive(self, key: &[u8], usage: u32, kind: u8) -> Zeroizing<Vec<u8>> {
        let u = usage.to_be_bytes();
        let label = [u[0], u[1], u[2], u[3], kind];
        let len = if kind == KEY_USAGE_ENCRYPTION {
            self.key_len()
        } else {
            self.mac_len()
        };
        self.kdf(key, &label, len)
    }

    /// String-to-key (RFC 8009 §4): PBKDF2-HMAC-SHA2 over "enctype-name\0" || salt, then the KDF
    /// with label "kerberos".
    pub(crate) fn string_to_key(
        self,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Zeroizing<Vec<u8>> {
        let mut saltp = Vec::with_capacity(self.name().len() + 1 + salt.len());
        saltp.extend_from_slice(self.name().as_bytes());
        saltp.push(0);
        saltp.extend_from_slice(salt);
        let mut tkey = Zeroizing::new(vec![0u8; self.key_len()]);
        match self {
            Profile::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password, &saltp, iterations, &mut tkey)
            }
            Profile::Sha384 => {
                pbkdf2::pbkdf2_hmac::<Sha384>(password, &saltp, iterations, &mut tkey)
            }
        }
        self.kdf(&tkey, b"kerberos", self.key_len())
    }

    /// Ke's key schedule and Ki for key usage `usage`: what encrypting under it needs, made
    /// once for many messages by [`super::SealingKey`].
    pub(crate) fn prepare(self, key: &[u8], usage: u32) -> Option<(AesKey, Zeroizing<Vec<u8>>)> {
        let ke = self.derive(key, usage, KEY_USAGE_ENCRYPTION);
        let ki = self.derive(key, usage, KEY_USAGE_INTEGRITY);
        Some((AesKey::new(&ke)?, ki))
    }

    /// Encrypts with the keys [`Profile::prepare`] made.
    pub(crate) fn seal(
        self,
        ke: &AesKey,
        ki: &[u8],
        confounder: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut data = Zeroizing::new(Vec::with_capacity(confounder.len() + plaintext.len()));
        data.extend_from_slice(confounder);
        data.extend_from_slice(plaintext);
        let mut out = aes_cts::encrypt(ke, &data).unwrap_or_default();
        // The MAC covers the (zero) IV and the ciphertext: encrypt-then-MAC.
        let mac = self.hmac(ki, &[&[0u8; BLOCK], &out]);
        out.extend_from_slice(&mac[..self.mac_len()]);
        out
    }

    /// [`Profile::prepare`] and [`Profile::seal`] in one, for the test vectors.
    #[cfg(test)]
    fn encrypt(self, key: &[u8], usage: u32, confounder: &[u8], plaintext: &[u8]) -> Vec<u8> {
        // `Key` guarantees the profile's key length.
        self.prepare(key, usage)
            .map(|(ke, ki)| self.seal(&ke, &ki, confounder, plaintext))
            .unwrap_or_default()
    }

    pub(crate) fn decrypt(
        self,
        key: &[u8],
        usage: u32,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let h = self.mac_len();
        if ciphertext.len() < BLOCK + h {
            return Err(CryptoError::CiphertextTooShort);
        }
        let (body, mac) = ciphertext.split_at(ciphertext.len() - h);
        let ki = self.derive(key, usage, KEY_USAGE_INTEGRITY);
        let expected = self.hmac(&ki, &[&[0u8; BLOCK], body]);
        // Verify before decrypting anything: a forged message never reaches the cipher.
        if !bool::from(expected[..h].ct_eq(mac)) {
            return Err(CryptoError::IntegrityCheckFailed);
        }
        let ke = self.derive(key, usage, KEY_USAGE_ENCRYPTION);
        let cipher = AesKey::new(&ke).ok_or(CryptoError::IntegrityCheckFailed)?;
        let data =
            Zeroizing::new(aes_cts::decrypt(&cipher, body).ok_or(CryptoError::CiphertextTooShort)?);
        Ok(data[BLOCK..].to_vec())
    }

    /// hmac-sha256-128-aes128 (19) / hmac-sha384-192-aes256 (20).
    pub(crate) fn checksum(self, key: &[u8], usage: u32, data: &[u8]) -> Vec<u8> {
        let kc = self.derive(key, usage, KEY_USAGE_CHECKSUM);
        self.hmac(&kc, &[data])[..self.mac_len()].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    const BASE_128: &str = "3705D96080C17728A0E800EAB6E0D23C";
    const BASE_256: &str = "6D404D37FAF79F9DF0D33568D320669800EB4836472EA8A026D16B7182460C52";

    /// RFC 8009 Appendix A, "Sample results for string-to-key conversion" (32768 iterations).
    #[test]
    fn rfc8009_a_string_to_key() {
        // The salt is a 16-byte random UTF-8 string followed by "ATHENA.MIT.EDUraeburn".
        let salt =
            hex("10DF9DD783E5BC8ACEA1730E74355F61415448454E412E4D49542E4544557261656275726E");
        assert_eq!(
            *Profile::Sha256.string_to_key(b"password", &salt, 32768),
            hex("089BCA48B105EA6EA77CA5D2F39DC5E7")
        );
        assert_eq!(
            *Profile::Sha384.string_to_key(b"password", &salt, 32768),
            hex("45BD806DBF6A833A9CFFC1C94589A222367A79BC21C413718906E9F578A78467")
        );
    }

    /// RFC 8009 Appendix A, "Sample results for key derivation" (key usage 2).
    #[test]
    fn rfc8009_a_key_derivation() {
        let p = Profile::Sha256;
        let base = hex(BASE_128);
        assert_eq!(
            *p.derive(&base, 2, KEY_USAGE_CHECKSUM),
            hex("B31A018A48F54776F403E9A396325DC3")
        );
        assert_eq!(
            *p.derive(&base, 2, KEY_USAGE_ENCRYPTION),
            hex("9B197DD1E8C5609D6E67C3E37C62C72E")
        );
        assert_eq!(
            *p.derive(&base, 2, KEY_USAGE_INTEGRITY),
            hex("9FDA0E56AB2D85E1569A688696C26A6C")
        );

        let p = Profile::Sha384;
        let base = hex(BASE_256);
        assert_eq!(
            *p.derive(&base, 2, KEY_USAGE_CHECKSUM),
            hex("EF5718BE86CC84963D8BBB5031E9F5C4BA41F28FAF69E73D")
        );
        assert_eq!(
            *p.derive(&base, 2, KEY_USAGE_ENCRYPTION),
            hex("56AB22BEE63D82D7BC5227F6773F8EA7A5EB1C825160C38312980C442E5C7E49")
        );
        assert_eq!(
            *p.derive(&base, 2, KEY_USAGE_INTEGRITY),
            hex("69B16514E3CD8E56B82010D5C73012B622C4D00FFC23ED1F")
        );
    }

    /// RFC 8009 Appendix A, "Sample encryptions": (confounder, plaintext, ciphertext || HMAC).
    #[test]
    fn rfc8009_a_sample_encryptions() {
        let long = "000102030405060708090A0B0C0D0E0F1011121314";
        let block = "000102030405060708090A0B0C0D0E0F";
        let short = "000102030405";
        let cases: &[(Profile, &str, &str, &str, &str)] = &[
            (
                Profile::Sha256,
                "7E5895EAF2672435BAD817F545A37148",
                "",
                "EF85FB890BB8472F4DAB20394DCA781D",
                "AD877EDA39D50C870C0D5A0A8E48C718",
            ),
            (
                Profile::Sha256,
                "7BCA285E2FD4130FB55B1A5C83BC5B24",
                short,
                "84D7F30754ED987BAB0BF3506BEB09CFB55402CEF7E6",
                "877CE99E247E52D16ED4421DFDF8976C",
            ),
            (
                Profile::Sha256,
                "56AB21713FF62C0A1457200F6FA9948F",
                block,
                "3517D640F50DDC8AD3628722B3569D2AE07493FA8263254080EA65C1008E8FC2",
                "95FB4852E7D83E1E7C48C37EEBE6B0D3",
            ),
            (
                Profile::Sha256,
                "A7A4E29A4728CE10664FB64E49AD3FAC",
                long,
                "720F73B18D9859CD6CCB4346115CD336C70F58EDC0C4437C5573544C31C813BCE1E6D072C1",
                "86B39A413C2F92CA9B8334A287FFCBFC",
            ),
            (
                Profile::Sha384,
                "F764E9FA15C276478B2C7D0C4E5F58E4",
                "",
                "41F53FA5BFE7026D91FAF9BE959195A0",
                "58707273A96A40F0A01960621AC612748B9BBFBE7EB4CE3C",
            ),
            (
                Profile::Sha384,
                "B80D3251C1F6471494256FFE712D0B9A",
                short,
                "4ED7B37C2BCAC8F74F23C1CF07E62BC7B75FB3F637B9",
                "F559C7F664F69EAB7B6092237526EA0D1F61CB20D69D10F2",
            ),
            (
                Profile::Sha384,
                "53BF8A0D105265D4E276428624CE5E63",
                block,
                "BC47FFEC7998EB91E8115CF8D19DAC4BBBE2E163E87DD37F49BECA92027764F6",
                "8CF51F14D798C2273F35DF574D1F932E40C4FF255B36A266",
            ),
            (
                Profile::Sha384,
                "763E65367E864F02F55153C7E3B58AF1",
                long,
                "40013E2DF58E8751957D2878BCD2D6FE101CCFD556CB1EAE79DB3C3EE86429F2B2A602AC86",
                "FEF6ECB647D6295FAE077A1FEB517508D2C16B4192E01F62",
            ),
        ];
        for (profile, confounder, plain, cipher, mac) in cases {
            let base = match profile {
                Profile::Sha256 => hex(BASE_128),
                Profile::Sha384 => hex(BASE_256),
            };
            let mut expected = hex(cipher);
            expected.extend_from_slice(&hex(mac));
            let out = profile.encrypt(&base, 2, &hex(confounder), &hex(plain));
            assert_eq!(out, expected, "{} plaintext {plain:?}", profile.name());
            assert_eq!(profile.decrypt(&base, 2, &out).unwrap(), hex(plain));
        }
    }

    /// RFC 8009 Appendix A, "Sample checksums" (key usage 2).
    #[test]
    fn rfc8009_a_sample_checksums() {
        let data = hex("000102030405060708090A0B0C0D0E0F1011121314");
        assert_eq!(
            Profile::Sha256.checksum(&hex(BASE_128), 2, &data),
            hex("D78367186643D67B411CBA9139FC1DEE")
        );
        assert_eq!(
            Profile::Sha384.checksum(&hex(BASE_256), 2, &data),
            hex("45EE791567EEFCA37F4AC1E0222DE80D43C3BFA06699672A")
        );
    }
}
