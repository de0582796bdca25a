//! Small helpers over `rasn-kerberos`: constants of RFC 4120, flag bits, times, strings, and
//! decoding that turns every failure into [`KcdError::MalformedReply`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rasn::types::BitString;
use rasn_kerberos::{KerberosFlags, KerberosString, KerberosTime, PrincipalName};

use crate::KcdError;

/// Message types (RFC 4120 7.5.7).
pub(crate) mod msg_type {
    pub(crate) const AS_REQ: i32 = 10;
    pub(crate) const TGS_REQ: i32 = 12;
    pub(crate) const AP_REQ: i32 = 14;
}

/// Error codes (RFC 4120 7.5.9) this crate reacts to.
pub(crate) mod error_code {
    pub(crate) const C_PRINCIPAL_UNKNOWN: i32 = 6;
    pub(crate) const S_PRINCIPAL_UNKNOWN: i32 = 7;
    pub(crate) const POLICY: i32 = 12;
    pub(crate) const BADOPTION: i32 = 13;
    pub(crate) const ETYPE_NOSUPP: i32 = 14;
    pub(crate) const PREAUTH_FAILED: i32 = 24;
    pub(crate) const PREAUTH_REQUIRED: i32 = 25;
    pub(crate) const TKT_EXPIRED: i32 = 32;
    pub(crate) const AP_ERR_SKEW: i32 = 37;
    pub(crate) const RESPONSE_TOO_BIG: i32 = 52;
}

/// Pre-authentication data types (RFC 4120 7.5.2, RFC 6113, MS-SFU).
pub(crate) mod pa_type {
    pub(crate) const TGS_REQ: i32 = 1;
    pub(crate) const ENC_TIMESTAMP: i32 = 2;
    pub(crate) const ETYPE_INFO2: i32 = 19;
    pub(crate) const FOR_USER: i32 = 129;
    pub(crate) const FX_COOKIE: i32 = 133;
}

/// Name types (RFC 4120 6.2, RFC 6806).
pub(crate) mod name_type {
    pub(crate) const PRINCIPAL: i32 = 1;
    pub(crate) const SRV_INST: i32 = 2;
    pub(crate) const ENTERPRISE: i32 = 10;
}

/// Key usage numbers (RFC 4120 7.5.1, MS-SFU 2.2.1).
pub(crate) mod usage {
    pub(crate) const PA_ENC_TIMESTAMP: u32 = 1;
    pub(crate) const AS_REP_ENC_PART: u32 = 3;
    pub(crate) const TGS_REQ_AUTH_CKSUM: u32 = 6;
    pub(crate) const TGS_REQ_AUTHENTICATOR: u32 = 7;
    pub(crate) const TGS_REP_ENC_PART: u32 = 8;
    pub(crate) const AP_REQ_AUTHENTICATOR: u32 = 11;
    pub(crate) const AP_REP_ENC_PART: u32 = 12;
    pub(crate) const PA_FOR_USER_CKSUM: u32 = 17;
}

/// AP options (RFC 4120 5.5.1).
pub(crate) mod ap_option {
    pub(crate) const MUTUAL_REQUIRED: usize = 2;
}

/// KDC option bits (RFC 4120 5.4.1); bit 0 is the most significant bit of the first byte.
pub(crate) mod kdc_option {
    pub(crate) const FORWARDABLE: usize = 1;
    pub(crate) const CNAME_IN_ADDL_TKT: usize = 14;
}

/// Ticket flag bits (RFC 4120 5.3).
pub(crate) mod ticket_flag {
    pub(crate) const FORWARDABLE: usize = 1;
}

/// A 32-bit Kerberos flag field with `bits` set. `rasn-kerberos`'s own constructors build
/// one-byte strings with the wrong bit positions, so flags are built here from bit numbers.
pub(crate) fn flags(bits: &[usize]) -> KerberosFlags {
    BitString::from_slice(&flag_bytes(bits))
}

/// The four bytes of [`flags`] (bit 0 the first byte's highest).
pub(crate) fn flag_bytes(bits: &[usize]) -> [u8; 4] {
    let mut bytes = [0u8; 4];
    for &bit in bits {
        if let Some(byte) = bytes.get_mut(bit / 8) {
            *byte |= 0x80 >> (bit % 8);
        }
    }
    bytes
}

/// Whether `bit` is set; bits beyond the field's length are unset.
pub(crate) fn has_flag(flags: &KerberosFlags, bit: usize) -> bool {
    flags.get(bit).is_some_and(|b| *b)
}

/// A time as Kerberos sends it: whole seconds, UTC (DER allows no fraction in KerberosTime).
pub(crate) fn kerberos_time(time: SystemTime) -> KerberosTime {
    // The last instant a KerberosTime can carry: its years have four digits.
    const LAST: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let seconds = match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(LAST).min(LAST),
        Err(_) => 0,
    };
    let utc = chrono::DateTime::from_timestamp(seconds, 0).unwrap_or_default();
    KerberosTime(utc.fixed_offset())
}

/// The system time of a Kerberos time (times before 1970 become the epoch).
pub(crate) fn system_time(time: &KerberosTime) -> SystemTime {
    let seconds = time.0.timestamp();
    match u64::try_from(seconds) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}

/// Seconds since the epoch of a Kerberos time, signed.
pub(crate) fn unix_seconds(time: &KerberosTime) -> i64 {
    time.0.timestamp()
}

/// A Kerberos string; fails for characters a GeneralString cannot carry.
pub(crate) fn kstring(value: &str) -> Result<KerberosString, KcdError> {
    KerberosString::from_bytes(value.as_bytes()).map_err(|_| KcdError::InvalidName {
        name: value.to_string(),
        reason: "contains characters a Kerberos string cannot carry".into(),
    })
}

/// A Kerberos string as text (bytes that are not UTF-8 are replaced).
pub(crate) fn text(value: &KerberosString) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// A principal name of `name_type` from its components.
pub(crate) fn principal_name(
    name_type: i32,
    components: &[&str],
) -> Result<PrincipalName, KcdError> {
    Ok(PrincipalName {
        r#type: name_type,
        string: components
            .iter()
            .map(|c| kstring(c))
            .collect::<Result<_, _>>()?,
    })
}

/// A principal name as text, components joined by `/` (`HTTP/exchange.test.local`).
pub(crate) fn name_text(name: &PrincipalName) -> String {
    name.string.iter().map(text).collect::<Vec<_>>().join("/")
}

/// Whether two principal names name the same principal (name types are hints and differ
/// between requests and replies, so only the components count).
pub(crate) fn same_name(a: &PrincipalName, b: &PrincipalName) -> bool {
    a.string == b.string
}

/// Decodes `bytes` as `T`, ignoring trailing bytes (decrypted parts may carry padding); any
/// failure is a malformed reply naming `what`.
pub(crate) fn decode<T: rasn::Decode>(bytes: &[u8], what: &str) -> Result<T, KcdError> {
    rasn::ber::decode_with_remainder::<T>(bytes)
        .map(|(value, _)| value)
        .map_err(|error| KcdError::malformed(format!("{what}: {error}")))
}

/// The size of a DER element with a one-byte tag whose contents are `len` bytes long.
pub(crate) fn der_size(len: usize) -> usize {
    let length_bytes = if len < 0x80 {
        1
    } else {
        1 + (usize::BITS - len.leading_zeros()).div_ceil(8) as usize
    };
    1 + length_bytes + len
}

/// Writes a DER element's tag and length.
pub(crate) fn push_der_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    push_der_length(out, len);
}

/// Writes a DER length.
pub(crate) fn push_der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = (len.leading_zeros() / 8) as usize;
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

/// Universal tags of the DER this crate writes by hand.
pub(crate) mod tag {
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const GENERALIZED_TIME: u8 = 0x18;
    /// KerberosString (RFC 4120 5.2.1).
    pub(crate) const GENERAL_STRING: u8 = 0x1b;
}

/// The size of a primitive element with `len` bytes of contents inside an explicit tag.
pub(crate) fn explicit_size(len: usize) -> usize {
    der_size(der_size(len))
}

/// Writes the primitive element `tag` with `contents` inside the explicit context tag
/// `[context]`.
pub(crate) fn push_explicit(out: &mut Vec<u8>, context: u8, tag: u8, contents: &[u8]) {
    push_der_header(out, 0xa0 | context, der_size(contents.len()));
    push_der_header(out, tag, contents.len());
    out.extend_from_slice(contents);
}

/// A KerberosTime's GeneralizedTime contents, `YYYYMMDDHHMMSSZ` (RFC 4120 5.2.3), for a time
/// [`kerberos_time`] made (its years have four digits).
pub(crate) fn kerberos_time_digits(time: &KerberosTime) -> [u8; 15] {
    use chrono::{Datelike as _, Timelike as _};
    let utc = time.0.naive_utc();
    let year = u32::try_from(utc.year()).unwrap_or(0).min(9999);
    let mut digits = *b"00000000000000Z";
    let fields = [
        (0, 4, year),
        (4, 2, utc.month()),
        (6, 2, utc.day()),
        (8, 2, utc.hour()),
        (10, 2, utc.minute()),
        (12, 2, utc.second()),
    ];
    for (start, width, mut value) in fields {
        if let Some(field) = digits.get_mut(start..start + width) {
            for digit in field.iter_mut().rev() {
                *digit = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
    }
    digits
}

/// A DER INTEGER's contents: the fewest big-endian two's-complement bytes that hold a value.
#[derive(Clone, Copy)]
pub(crate) struct DerInteger {
    bytes: [u8; 8],
    start: usize,
}

impl DerInteger {
    pub(crate) fn new(value: i64) -> Self {
        let bytes = value.to_be_bytes();
        // A leading byte may go when it only repeats the sign bit of the byte after it.
        let start = bytes
            .windows(2)
            .take_while(|pair| match pair {
                [0x00, next] => next & 0x80 == 0,
                [0xff, next] => next & 0x80 != 0,
                _ => false,
            })
            .count();
        Self { bytes, start }
    }

    pub(crate) fn contents(&self) -> &[u8] {
        self.bytes.get(self.start..).unwrap_or_default()
    }
}

/// Encodes `value` as DER. Encoding the types of this crate does not fail; should it, the
/// failure is reported as a malformed message rather than a panic.
pub(crate) fn encode<T: rasn::Encode>(value: &T, what: &str) -> Result<Vec<u8>, KcdError> {
    rasn::der::encode(value)
        .map_err(|error| KcdError::malformed(format!("encoding {what}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_bits_count_from_the_most_significant_bit() {
        let f = flags(&[kdc_option::FORWARDABLE, kdc_option::CNAME_IN_ADDL_TKT]);
        assert_eq!(f.as_raw_slice(), &[0x40, 0x02, 0, 0]);
        assert!(has_flag(&f, 1) && has_flag(&f, 14) && !has_flag(&f, 15) && !has_flag(&f, 40));
    }

    #[test]
    fn der_integers_are_what_rasn_writes() {
        for value in [
            0,
            1,
            5,
            23,
            127,
            128,
            255,
            256,
            -1,
            -128,
            -129,
            -135,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
        ] {
            let integer = DerInteger::new(value);
            let contents = integer.contents();
            let mut ours = Vec::new();
            push_der_header(&mut ours, 0x02, contents.len());
            ours.extend_from_slice(contents);
            assert_eq!(ours, rasn::der::encode(&value).unwrap(), "{value}");
        }
    }

    #[test]
    fn kerberos_time_digits_are_what_rasn_writes() {
        for seconds in [
            0,
            951_782_400,
            1_700_000_000,
            4_102_444_799,
            253_402_300_799,
        ] {
            let time = kerberos_time(UNIX_EPOCH + Duration::from_secs(seconds));
            let digits = kerberos_time_digits(&time);
            assert_eq!(
                &rasn::der::encode(&time).unwrap()[2..],
                &digits[..],
                "{seconds}"
            );
        }
        // Year 10000 and beyond: the last time a KerberosTime can carry.
        for seconds in [253_402_300_800, 1 << 40] {
            let far = kerberos_time(UNIX_EPOCH + Duration::from_secs(seconds));
            assert_eq!(&kerberos_time_digits(&far), b"99991231235959Z");
            assert_eq!(&rasn::der::encode(&far).unwrap()[2..], b"99991231235959Z");
        }
    }

    #[test]
    fn kerberos_time_has_whole_seconds_and_encodes_as_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let encoded = rasn::der::encode(&kerberos_time(t)).unwrap();
        assert_eq!(&encoded[2..], b"20231114221320Z");
        assert_eq!(
            system_time(&kerberos_time(t)),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }
}
