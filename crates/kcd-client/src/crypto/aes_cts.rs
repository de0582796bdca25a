//! AES in CBC mode with ciphertext stealing, as Kerberos uses it (RFC 3962 §6, RFC 8009 §5).
//!
//! Kerberos's variant always swaps the last two blocks, even when the message is a whole number of
//! blocks (NIST's CBC-CS3); a single-block message is plain CBC. The initial vector is always zero
//! here: Kerberos messages carry a random confounder instead, and no caller of this crate chains
//! cipher state between messages.
//!
//! Written by hand over the `aes` block cipher because the `cts` crate's variants and the `cbc`
//! crate would need the same glue, and the mode is thirty lines checked by RFC 3962's vectors.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256};

/// The AES block size; also the confounder length of every AES enctype.
pub(crate) const BLOCK: usize = 16;

/// An AES key schedule of either size. The `aes` crate wipes it on drop (feature `zeroize`).
// Lives on the stack for one message; boxing the larger schedule would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum AesKey {
    A128(Aes128),
    A256(Aes256),
}

impl AesKey {
    /// Returns `None` unless `key` is 16 or 32 bytes; callers pass lengths they derived themselves.
    pub(crate) fn new(key: &[u8]) -> Option<AesKey> {
        match key.len() {
            16 => Aes128::new_from_slice(key).ok().map(AesKey::A128),
            32 => Aes256::new_from_slice(key).ok().map(AesKey::A256),
            _ => None,
        }
    }

    pub(crate) fn encrypt_block(&self, block: &mut [u8; BLOCK]) {
        match self {
            AesKey::A128(k) => k.encrypt_block(block.into()),
            AesKey::A256(k) => k.encrypt_block(block.into()),
        }
    }

    fn decrypt_block(&self, block: &mut [u8; BLOCK]) {
        match self {
            AesKey::A128(k) => k.decrypt_block(block.into()),
            AesKey::A256(k) => k.decrypt_block(block.into()),
        }
    }
}

fn xor_into(dst: &mut [u8; BLOCK], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Encrypts `data` (at least one block long) with a zero IV; `None` if it is shorter.
pub(crate) fn encrypt(key: &AesKey, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < BLOCK {
        return None;
    }
    // Plain CBC over the zero-padded message; stealing then only reorders and truncates.
    let mut blocks: Vec<[u8; BLOCK]> = Vec::with_capacity(data.len().div_ceil(BLOCK));
    let mut prev = [0u8; BLOCK];
    for chunk in data.chunks(BLOCK) {
        let mut block = [0u8; BLOCK];
        block[..chunk.len()].copy_from_slice(chunk);
        xor_into(&mut block, &prev);
        key.encrypt_block(&mut block);
        prev = block;
        blocks.push(block);
    }
    let mut out = Vec::with_capacity(data.len());
    match blocks.as_slice() {
        [only] => out.extend_from_slice(only),
        [head @ .., penultimate, last] => {
            let tail_len = data.len() - BLOCK * (blocks.len() - 1);
            for block in head {
                out.extend_from_slice(block);
            }
            out.extend_from_slice(last);
            out.extend_from_slice(&penultimate[..tail_len]);
        }
        [] => {}
    }
    Some(out)
}

/// Decrypts `data` (at least one block long) with a zero IV; `None` if it is shorter.
pub(crate) fn decrypt(key: &AesKey, data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < BLOCK {
        return None;
    }
    let nblocks = data.len().div_ceil(BLOCK);
    let mut out = Vec::with_capacity(data.len());
    let mut prev = [0u8; BLOCK];
    if nblocks == 1 {
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(data);
        key.decrypt_block(&mut block);
        out.extend_from_slice(&block);
        return Some(out);
    }
    // Whole CBC blocks before the stolen pair.
    let (head, pair) = data.split_at(BLOCK * (nblocks - 2));
    for chunk in head.chunks(BLOCK) {
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(chunk);
        let cipher = block;
        key.decrypt_block(&mut block);
        xor_into(&mut block, &prev);
        out.extend_from_slice(&block);
        prev = cipher;
    }
    // `pair` is C_n (a full block) then the first `tail_len` bytes of C_{n-1}.
    let (c_last, c_pen_head) = pair.split_at(BLOCK);
    let tail_len = c_pen_head.len();
    let mut decrypted_last = [0u8; BLOCK];
    decrypted_last.copy_from_slice(c_last);
    key.decrypt_block(&mut decrypted_last);
    // D(C_n) = C_{n-1} ^ (P_n || zeros), so its tail is the stolen tail of C_{n-1}.
    let mut c_pen = [0u8; BLOCK];
    c_pen[..tail_len].copy_from_slice(c_pen_head);
    c_pen[tail_len..].copy_from_slice(&decrypted_last[tail_len..]);
    let mut p_last = [0u8; BLOCK];
    p_last[..tail_len].copy_from_slice(&decrypted_last[..tail_len]);
    xor_into(&mut p_last, c_pen_head);

    let mut p_pen = c_pen;
    key.decrypt_block(&mut p_pen);
    xor_into(&mut p_pen, &prev);
    out.extend_from_slice(&p_pen);
    out.extend_from_slice(&p_last[..tail_len]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    /// RFC 3962 Appendix B: CBC with ciphertext stealing, key "chicken teriyaki", zero IV.
    #[test]
    fn rfc3962_b_cts_vectors() {
        let key = AesKey::new(b"chicken teriyaki").unwrap();
        let input = b"I would like the General Gau's Chicken, please, and wonton soup.";
        let cases: &[(usize, &str)] = &[
            (17, "c6353568f2bf8cb4d8a580362da7ff7f97"),
            (
                31,
                "fc00783e0efdb2c1d445d4c8eff7ed2297687268d6ecccc0c07b25e25ecfe5",
            ),
            (
                32,
                "39312523a78662d5be7fcbcc98ebf5a897687268d6ecccc0c07b25e25ecfe584",
            ),
            (
                47,
                "97687268d6ecccc0c07b25e25ecfe584b3fffd940c16a18c1b5549d2f838029e\
                 39312523a78662d5be7fcbcc98ebf5",
            ),
            (
                48,
                "97687268d6ecccc0c07b25e25ecfe5849dad8bbb96c4cdc03bc103e1a194bbd8\
                 39312523a78662d5be7fcbcc98ebf5a8",
            ),
            (
                64,
                "97687268d6ecccc0c07b25e25ecfe58439312523a78662d5be7fcbcc98ebf5a8\
                 4807efe836ee89a526730dbc2f7bc8409dad8bbb96c4cdc03bc103e1a194bbd8",
            ),
        ];
        for (len, expected) in cases {
            let plain = &input[..*len];
            let cipher = encrypt(&key, plain).unwrap();
            assert_eq!(cipher, hex(expected), "encrypt {len} bytes");
            assert_eq!(
                decrypt(&key, &cipher).unwrap(),
                plain,
                "decrypt {len} bytes"
            );
        }
    }

    #[test]
    fn shorter_than_a_block_is_refused() {
        let key = AesKey::new(&[7u8; 32]).unwrap();
        assert!(encrypt(&key, &[0u8; 15]).is_none());
        assert!(decrypt(&key, &[0u8; 15]).is_none());
    }
}
