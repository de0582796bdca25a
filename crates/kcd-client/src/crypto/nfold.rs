//! The n-fold function of RFC 3961 §5.1.
//!
//! Only the AES-SHA1 profile (RFC 3962) needs it, to stretch the 5-byte usage constants and the
//! "kerberos" string to one AES block before key derivation.

/// Folds `input` into `out_len` bytes.
///
/// The input is repeated, each copy rotated 13 bits further right than the previous, until the
/// repetitions fill the least common multiple of the two lengths; those bits are cut into
/// `out_len`-byte pieces that are added with one's-complement (end-around carry) addition.
pub(crate) fn nfold(input: &[u8], out_len: usize) -> Vec<u8> {
    let mut acc = vec![0u8; out_len];
    if input.is_empty() || out_len == 0 {
        // Never called so: the constants are fixed and non-empty. An empty fold is all zeros.
        return acc;
    }
    let in_len = input.len();
    let total = lcm(in_len, out_len);
    let in_bits = in_len * 8;

    let mut chunk = vec![0u8; out_len];
    let mut filled = 0;
    for copy in 0..total / in_len {
        let shift = (13 * copy) % in_bits;
        for byte in 0..in_len {
            // Rotating right by `shift` puts source bit (j - shift) at position j, so this
            // output byte is the 8 source bits from `src` on: the low bits of one source byte
            // and the high bits of the next (wrapping at the end, which is a byte boundary).
            // Byte-wise rather than bit by bit: key derivation folds a constant on every
            // encryption, and the bit loop was a third of the time of a Negotiate token.
            let src = (byte * 8 + in_bits - shift) % in_bits;
            let (at, offset) = (src / 8, src % 8);
            let pair = u16::from(input[at]) << 8 | u16::from(input[(at + 1) % in_len]);
            let value = (pair >> (8 - offset)) as u8;
            chunk[filled] = value;
            filled += 1;
            if filled == out_len {
                ones_complement_add(&mut acc, &chunk);
                filled = 0;
            }
        }
    }
    acc
}

/// `acc += addend` as big-endian numbers, the carry out of the top byte added back at the bottom.
fn ones_complement_add(acc: &mut [u8], addend: &[u8]) {
    let mut carry = 0u16;
    for (a, b) in acc.iter_mut().zip(addend).rev() {
        let sum = u16::from(*a) + u16::from(*b) + carry;
        *a = sum as u8;
        carry = sum >> 8;
    }
    while carry != 0 {
        for a in acc.iter_mut().rev() {
            let sum = u16::from(*a) + carry;
            *a = sum as u8;
            carry = sum >> 8;
            if carry == 0 {
                break;
            }
        }
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

#[cfg(test)]
mod tests {
    use super::nfold;
    use crate::crypto::test_util::hex;

    /// RFC 3961 Appendix A.1.
    #[test]
    fn rfc3961_a1_nfold_vectors() {
        let cases: &[(&str, usize, &str)] = &[
            ("012345", 64, "be072631276b1955"),
            ("password", 56, "78a07b6caf85fa"),
            ("Rough Consensus, and Running Code", 64, "bb6ed30870b7f0e0"),
            (
                "password",
                168,
                "59e4a8ca7c0385c3c37b3f6d2000247cb6e6bd5b3e",
            ),
            (
                "MASSACHVSETTS INSTITVTE OF TECHNOLOGY",
                192,
                "db3b0d8f0b061e603282b308a50841229ad798fab9540c1b",
            ),
            ("Q", 168, "518a54a215a8452a518a54a215a8452a518a54a215"),
            ("ba", 168, "fb25d531ae8974499f52fd92ea9857c4ba24cf297e"),
            ("kerberos", 64, "6b65726265726f73"),
            ("kerberos", 128, "6b65726265726f737b9b5b2b93132b93"),
            (
                "kerberos",
                168,
                "8372c236344e5f1550cd0747e15d62ca7a5a3bcea4",
            ),
            (
                "kerberos",
                256,
                "6b65726265726f737b9b5b2b93132b935c9bdcdad95c9899c4cae4dee6d6cae4",
            ),
        ];
        for (input, bits, expected) in cases {
            assert_eq!(
                nfold(input.as_bytes(), bits / 8),
                hex(expected),
                "{bits}-fold({input:?})"
            );
        }
    }
}
