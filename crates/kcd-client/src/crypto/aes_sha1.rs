//! aes128-cts-hmac-sha1-96 and aes256-cts-hmac-sha1-96 (RFC 3962): RFC 3961's simplified profile
//! over AES-CTS, with HMAC-SHA1 truncated to 96 bits.

use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::aes_cts::{self, AesKey, BLOCK};
use super::nfold::nfold;
use super::{CryptoError, KEY_USAGE_CHECKSUM, KEY_USAGE_ENCRYPTION, KEY_USAGE_INTEGRITY};

/// Length of the truncated HMAC-SHA1 (96 bits), in the ciphertext and as the checksum.
pub(crate) const MAC_LEN: usize = 12;

/// DK(base, constant) of RFC 3961 §5.1: n-fold the constant to a block, then encrypt it
/// repeatedly with the base key until there are enough bytes. AES's random-to-key is the identity.
fn derive(base: &[u8], constant: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(base.len()));
    let Some(cipher) = AesKey::new(base) else {
        // `Key` guarantees 16 or 32 bytes for these etypes.
        return out;
    };
    let mut block = [0u8; BLOCK];
    block.copy_from_slice(&nfold(constant, BLOCK));
    while out.len() < base.len() {
        cipher.encrypt_block(&mut block);
        let take = (base.len() - out.len()).min(BLOCK);
        out.extend_from_slice(&block[..take]);
    }
    out
}

fn usage_constant(usage: u32, kind: u8) -> [u8; 5] {
    let u = usage.to_be_bytes();
    [u[0], u[1], u[2], u[3], kind]
}

fn hmac_sha1_96(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// String-to-key (RFC 3962 §4): PBKDF2-HMAC-SHA1, then DK(tkey, "kerberos").
pub(crate) fn string_to_key(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    key_len: usize,
) -> Zeroizing<Vec<u8>> {
    let mut tkey = Zeroizing::new(vec![0u8; key_len]);
    pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut tkey);
    derive(&tkey, b"kerberos")
}

/// Ke's key schedule and Ki for key usage `usage`: what encrypting under it needs, made once
/// for many messages by [`super::SealingKey`].
pub(crate) fn prepare(key: &[u8], usage: u32) -> Option<(AesKey, Zeroizing<Vec<u8>>)> {
    let ke = derive(key, &usage_constant(usage, KEY_USAGE_ENCRYPTION));
    let ki = derive(key, &usage_constant(usage, KEY_USAGE_INTEGRITY));
    Some((AesKey::new(&ke)?, ki))
}

/// Encrypts with the keys [`prepare`] made: HMAC of the plaintext (MAC-then-encrypt).
pub(crate) fn seal(ke: &AesKey, ki: &[u8], confounder: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut data = Zeroizing::new(Vec::with_capacity(confounder.len() + plaintext.len()));
    data.extend_from_slice(confounder);
    data.extend_from_slice(plaintext);
    let mac = hmac_sha1_96(ki, &[&data]);
    let mut out = aes_cts::encrypt(ke, &data).unwrap_or_default();
    out.extend_from_slice(&mac);
    out
}

/// [`prepare`] and [`seal`] in one, for the test vectors.
#[cfg(test)]
fn encrypt(key: &[u8], usage: u32, confounder: &[u8], plaintext: &[u8]) -> Vec<u8> {
    // `Key` guarantees 16 or 32 bytes for these etypes.
    prepare(key, usage)
        .map(|(ke, ki)| seal(&ke, &ki, confounder, plaintext))
        .unwrap_or_default()
}

pub(crate) fn decrypt(key: &[u8], usage: u32, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if ciphertext.len() < BLOCK + MAC_LEN {
        return Err(CryptoError::CiphertextTooShort);
    }
    let (body, mac) = ciphertext.split_at(ciphertext.len() - MAC_LEN);
    let ke = derive(key, &usage_constant(usage, KEY_USAGE_ENCRYPTION));
    let ki = derive(key, &usage_constant(usage, KEY_USAGE_INTEGRITY));
    let cipher = AesKey::new(&ke).ok_or(CryptoError::IntegrityCheckFailed)?;
    // The MAC covers the plaintext (MAC-then-encrypt), so decrypt first; nothing is returned
    // before the comparison, which is constant-time.
    let data =
        Zeroizing::new(aes_cts::decrypt(&cipher, body).ok_or(CryptoError::CiphertextTooShort)?);
    let expected = hmac_sha1_96(&ki, &[&data]);
    if !bool::from(expected.ct_eq(mac)) {
        return Err(CryptoError::IntegrityCheckFailed);
    }
    Ok(data[BLOCK..].to_vec())
}

/// hmac-sha1-96-aes128 (15) / hmac-sha1-96-aes256 (16).
pub(crate) fn checksum(key: &[u8], usage: u32, data: &[u8]) -> Vec<u8> {
    let kc = derive(key, &usage_constant(usage, KEY_USAGE_CHECKSUM));
    hmac_sha1_96(&kc, &[data]).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    /// RFC 3962 Appendix B: (iterations, password, salt, 128-bit key, 256-bit key).
    const RFC3962_S2K: &[(u32, &str, &str, &str, &str)] = &[
        (
            1,
            "password",
            "ATHENA.MIT.EDUraeburn",
            "42263c6e89f4fc28b8df68ee09799f15",
            "fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161",
        ),
        (
            2,
            "password",
            "ATHENA.MIT.EDUraeburn",
            "c651bf29e2300ac27fa469d693bdda13",
            "a2e16d16b36069c135d5e9d2e25f896102685618b95914b467c67622225824ff",
        ),
        (
            1200,
            "password",
            "ATHENA.MIT.EDUraeburn",
            "4c01cd46d632d01e6dbe230a01ed642a",
            "55a6ac740ad17b4846941051e1e8b0a7548d93b0ab30a8bc3ff16280382b8c2a",
        ),
        (
            5,
            "password",
            "\u{12}\u{34}\u{56}\u{78}\u{78}\u{56}\u{34}\u{12}",
            "e9b23d52273747dd5c35cb55be619d8e",
            "97a4e786be20d81a382d5ebc96d5909cabcdadc87ca48f574504159f16c36e31",
        ),
        (
            1200,
            "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "pass phrase equals block size",
            "59d1bb789a828b1aa54ef9c2883f69ed",
            "89adee3608db8bc71f1bfbfe459486b05618b70cbae22092534e56c553ba4b34",
        ),
        (
            1200,
            "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "pass phrase exceeds block size",
            "cb8005dc5f90179a7f02104c0018751d",
            "d78c5c9cb872a8c9dad4697f0bb5b2d21496c82beb2caeda2112fceea057401b",
        ),
        (
            50,
            "\u{1D11E}",
            "EXAMPLE.COMpianist",
            "f149c1f2e154a73452d43e7fe62a56e5",
            "4b6d9839f84406df1f09cc166db4b83c571848b784a3d6bdc346589a3e393f9e",
        ),
    ];

    #[test]
    fn rfc3962_b_string_to_key_vectors() {
        for (iterations, password, salt, k128, k256) in RFC3962_S2K {
            let pw = password.as_bytes();
            let s = salt.as_bytes();
            assert_eq!(
                *string_to_key(pw, s, *iterations, 16),
                hex(k128),
                "{iterations} 128"
            );
            assert_eq!(
                *string_to_key(pw, s, *iterations, 32),
                hex(k256),
                "{iterations} 256"
            );
        }
    }

    /// MIT krb5 `t_cksums.c`: hmac-sha1-96-aes128 and -aes256 known answers.
    #[test]
    fn mit_known_checksums() {
        let k128 = hex("9062430C8CDA3388922E6D6A509F5B7A");
        assert_eq!(
            checksum(&k128, 3, b"eight nine ten eleven twelve thirteen"),
            hex("01A4B088D45628F6946614E3")
        );
        let k256 = hex("B1AE4CD8462AFF1677053CC9279AAC30B796FB81CE21474DD3DDBCFEA4EC76D7");
        assert_eq!(
            checksum(&k256, 4, b"fourteen"),
            hex("E08739E3279E2903EC8E3836")
        );
    }

    /// MIT krb5 `t_decrypt.c`: ciphertexts MIT produced, which we must open.
    #[test]
    fn mit_known_ciphertexts_decrypt() {
        let cases: &[(&str, u32, &str, &str)] = &[
            (
                "",
                0,
                "5A5C0F0BA54F3828B2195E66CA24A289",
                "49FF8E11C173D9583A3254FBE7B1F1DF36C538E8416784A1672E6676",
            ),
            (
                "1",
                1,
                "98450E3F3BAA13F5C99BEB936981B06F",
                "F86742F537B35DC2174A4DBAA920FAF9042090B065E1EBB1CAD9A65394",
            ),
            (
                "9 bytesss",
                2,
                "9062430C8CDA3388922E6D6A509F5B7A",
                "68FB9679601F45C78857B2BF820FD6E53ECA8D42FD4B1D7024A09205ABB7CD2EC26C355D2F",
            ),
            (
                "13 bytes byte",
                3,
                "033EE6502C54FD23E27791E987983827",
                "EC366D0327A933BF49330E650E49BC6B974637FE80BF532FE51795B4809718E6194724DB948D1FD637",
            ),
            (
                "30 bytes bytes bytes bytes byt",
                4,
                "DCEEB70B3DE76562E689226C76429148",
                "C96081032D5D8EEB7E32B4089F789D0FAA481DEA74C0F97CBF3146DDFCF8E800156ECB532FC203E30FF600B63B350939FECE510F02D7FF1E7BAC",
            ),
            (
                "",
                0,
                "17F275F2954F2ED1F90C377BA7F4D6A369AA0136E0BF0C927AD6133C693759A9",
                "E5094C55EE7B38262E2B044280B069379A95BF95BD8376FB3281B435",
            ),
            (
                "1",
                1,
                "B9477E1FF0329C0050E20CE6C72D2DFF27E8FE541AB0954429A9CB5B4F7B1E2A",
                "406150B97AEB76D43B36B62CC1ECDFBE6F40E95755E0BEB5C27825F3A4",
            ),
            (
                "9 bytesss",
                2,
                "B1AE4CD8462AFF1677053CC9279AAC30B796FB81CE21474DD3DDBCFEA4EC76D7",
                "09957AA25FCAF88F7B39E4406E633012D5FEA21853F6478DA7065CAEF41FD454A40824EEC5",
            ),
            (
                "13 bytes byte",
                3,
                "E5A72BE9B7926C1225BAFEF9C1872E7BA4CDB2B17893D84ABD90ACDD8764D966",
                "D8F1AAFEEC84587CC3E700A774E56651A6D693E174EC4473B5E6D96F80297A653FB818AD893E719F96",
            ),
            (
                "30 bytes bytes bytes bytes byt",
                4,
                "F1C795E9248A09338D82C3F8D5B567040B0110736845041347235B1404231398",
                "D1137A4D634CFECE924DBC3BF6790648BD5CFF7DE0E7B99460211D0DAEF3D79A295C688858F3B34B9CBD6EEBAE81DAF6B734D4D498B6714F1C1D",
            ),
        ];
        for (plain, usage, key, cipher) in cases {
            let out = decrypt(&hex(key), *usage, &hex(cipher)).unwrap();
            assert_eq!(out, plain.as_bytes(), "{plain:?} with {key}");
            // Re-encrypting with the confounder MIT chose must give MIT's bytes back.
            let confounder = aes_cts::decrypt(
                &AesKey::new(&derive(
                    &hex(key),
                    &usage_constant(*usage, KEY_USAGE_ENCRYPTION),
                ))
                .unwrap(),
                &hex(cipher)[..hex(cipher).len() - MAC_LEN],
            )
            .unwrap()[..BLOCK]
                .to_vec();
            assert_eq!(
                encrypt(&hex(key), *usage, &confounder, plain.as_bytes()),
                hex(cipher)
            );
        }
    }
}
