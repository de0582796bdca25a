//! rc4-hmac (etype 23, RFC 4757) and the HMAC-MD5 checksum (cksumtype -138).
//!
//! Weak, and deprecated by RFC 8429, but Active Directory and Samba AD still issue RC4 tickets for
//! accounts without AES keys, so a client talking to them must handle it.

use hmac::{Hmac, Mac};
use md4::Md4;
use md5::{Digest, Md5};
use rc4::{KeyInit, Rc4, StreamCipher, consts::U16};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::CryptoError;

/// The confounder RFC 4757 puts in front of the plaintext.
pub(crate) const CONFOUNDER_LEN: usize = 8;
/// The HMAC-MD5 that leads the ciphertext.
const MAC_LEN: usize = 16;

/// Microsoft's key usage numbers differ from RFC 4120's in two places (RFC 4757 §3, and MIT's
/// `krb5int_arcfour_translate_usage`): the AS-REP encrypted part (3) uses 8 like the TGS-REP, and
/// the GSS sign usage 23 becomes 13. Everything else passes through.
pub(crate) fn translate_usage(usage: u32) -> u32 {
    match usage {
        3 => 8,
        23 => 13,
        other => other,
    }
}

fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 16]> {
    let mut mac = <Hmac<Md5> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// String-to-key: MD4 of the UTF-16LE password (the NT hash); RC4 keys have no salt.
pub(crate) fn string_to_key(password: &str) -> Zeroizing<Vec<u8>> {
    let utf16: Zeroizing<Vec<u8>> =
        Zeroizing::new(password.encode_utf16().flat_map(u16::to_le_bytes).collect());
    Zeroizing::new(Md4::digest(&*utf16).to_vec())
}

fn rc4_apply(key: &[u8; 16], data: &mut [u8]) {
    let mut cipher = Rc4::<U16>::new(key.into());
    cipher.apply_keystream(data);
}

pub(crate) fn encrypt(key: &[u8], usage: u32, confounder: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let k1 = hmac_md5(key, &[&translate_usage(usage).to_le_bytes()]);
    let mut data = Zeroizing::new(Vec::with_capacity(confounder.len() + plaintext.len()));
    data.extend_from_slice(confounder);
    data.extend_from_slice(plaintext);
    let checksum = hmac_md5(&*k1, &[&data]);
    let k3 = hmac_md5(&*k1, &[&*checksum]);
    let mut out = Vec::with_capacity(MAC_LEN + data.len());
    out.extend_from_slice(&*checksum);
    out.extend_from_slice(&data);
    rc4_apply(&k3, &mut out[MAC_LEN..]);
    out
}

pub(crate) fn decrypt(key: &[u8], usage: u32, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() < MAC_LEN + CONFOUNDER_LEN {
        return Err(CryptoError::CiphertextTooShort);
    }
    let (checksum, body) = ciphertext.split_at(MAC_LEN);
    let k1 = hmac_md5(key, &[&translate_usage(usage).to_le_bytes()]);
    let k3 = hmac_md5(&*k1, &[checksum]);
    let mut data = Zeroizing::new(body.to_vec());
    rc4_apply(&k3, &mut data);
    let expected = hmac_md5(&*k1, &[&data]);
    if !bool::from(expected.ct_eq(checksum)) {
        return Err(CryptoError::IntegrityCheckFailed);
    }
    Ok(data[CONFOUNDER_LEN..].to_vec())
}

/// KERB_CHECKSUM_HMAC_MD5 (RFC 4757 §4): the raw key bytes, whatever their etype, key the
/// signing-key HMAC; the usage goes through the same translation as encryption (as in MIT).
pub(crate) fn hmac_md5_checksum(key: &[u8], usage: u32, data: &[u8]) -> Vec<u8> {
    let ksign = hmac_md5(key, &[b"signaturekey\0"]);
    let mut md5 = Md5::new();
    md5.update(translate_usage(usage).to_le_bytes());
    md5.update(data);
    let tmp = md5.finalize();
    hmac_md5(&*ksign, &[&tmp]).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    #[test]
    fn string_to_key_is_the_nt_hash() {
        // The NT hash of "password" is widely published.
        assert_eq!(
            *string_to_key("password"),
            hex("8846F7EAEE8FB117AD06BDD830B7586C")
        );
    }

    /// MIT krb5 `t_decrypt.c` arcfour-hmac cases; the usage-3 case exercises the 3 -> 8
    /// translation of the AS-REP encrypted part.
    #[test]
    fn mit_known_ciphertexts_decrypt() {
        let cases: &[(&str, u32, &str, &str)] = &[
            (
                "",
                0,
                "F81FEC39255F5784E850C4377C88BD85",
                "02C1EB15586144122EC717763DD348BF00434DDC6585954C",
            ),
            (
                "1",
                1,
                "67D1300D281223867F9647FF48721273",
                "6156E0CC04E0A0874F9FDA008F498A7ADBBC80B70B14DDDBC0",
            ),
            (
                "9 bytesss",
                2,
                "3E40AB6093695281B3AC1A9304224D98",
                "0F9AD121D99D4A09448E4F1F718C4F5CBE6096262C66F29DF232A87C9F98755D55",
            ),
            (
                "13 bytes byte",
                3,
                "4BA2FBF0379FAED87A254D3B353D5A7E",
                "612C57568B17A70352BAE8CF26FB9459A6F3353CD35FD439DB3107CBEC765D326DFC04C1DD",
            ),
            (
                "30 bytes bytes bytes bytes byt",
                4,
                "68F263DB3FCE15D031C9EAB02D67107A",
                "95F9047C3AD75891C2E9B04B16566DC8B6EB9CE4231AFB2542EF87A7B5A0F260A99F0460508DE0CECC632D07C354124E46C5D2234EB8",
            ),
        ];
        for (plain, usage, key, cipher) in cases {
            let key = hex(key);
            let cipher = hex(cipher);
            assert_eq!(
                decrypt(&key, *usage, &cipher).unwrap(),
                plain.as_bytes(),
                "{plain:?}"
            );
            // Recover MIT's confounder and check that encryption reproduces its bytes exactly.
            let k1 = hmac_md5(&key, &[&translate_usage(*usage).to_le_bytes()]);
            let k3 = hmac_md5(&*k1, &[&cipher[..MAC_LEN]]);
            let mut body = cipher[MAC_LEN..].to_vec();
            rc4_apply(&k3, &mut body);
            assert_eq!(
                encrypt(&key, *usage, &body[..CONFOUNDER_LEN], plain.as_bytes()),
                cipher
            );
        }
    }

    #[test]
    fn as_rep_usage_is_translated() {
        let key = [0x42u8; 16];
        let sealed = encrypt(&key, 3, &[1; 8], b"as-rep");
        assert_eq!(decrypt(&key, 8, &sealed).unwrap(), b"as-rep");
        assert!(matches!(
            decrypt(&key, 9, &sealed),
            Err(CryptoError::IntegrityCheckFailed)
        ));
    }

    /// MIT krb5 `t_cksums.c`: hmac-md5-arcfour (-138) known answer.
    #[test]
    fn mit_known_hmac_md5_checksum() {
        let key = hex("F7D3A155AF5E238A0B7A871A96BA2AB2");
        assert_eq!(
            hmac_md5_checksum(&key, 6, b"seventeen eighteen nineteen twenty"),
            hex("EB38CC97E2230F59DA4117DC5859D7EC")
        );
    }
}
