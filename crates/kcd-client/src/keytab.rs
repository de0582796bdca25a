//! MIT keytab files: the gateway's service key, as `ktutil`, `kadmin` or `samba-tool` write it.
//!
//! Reads format versions 0x0502 (big-endian, the only one written since the 1990s) and 0x0501
//! (host byte order, read as little-endian as MIT would on the x86 and ARM hosts we run on);
//! writes 0x0502. Entries whose etype [`EncType`] does not cover (DES, 3DES, Camellia) are skipped,
//! not an error, so a keytab exported from a mixed-etype KDC still loads.
//!
//! ```
//! use kcd_client::crypto::{EncType, Key};
//! use kcd_client::keytab::{Keytab, KeytabEntry, Principal};
//!
//! let principal = Principal::parse("HTTP/seg.test.local", Some("TEST.LOCAL"))?;
//! let key = Key::from_password(EncType::Aes256CtsHmacSha196, "pw", "TEST.LOCALHTTPseg.test.local", None)?;
//! let mut keytab = Keytab::new();
//! keytab.push(KeytabEntry { principal: principal.clone(), timestamp: 0, kvno: 3, key });
//!
//! let reread = Keytab::parse(&keytab.to_bytes())?;
//! let entry = reread.key_for(&principal, EncType::Aes256CtsHmacSha196).unwrap();
//! assert_eq!(entry.kvno, 3);
//! assert_eq!(entry.principal.to_string(), "HTTP/seg.test.local@TEST.LOCAL");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The format (MIT's `keytab.txt`): a 2-byte version, then records, each a signed 32-bit length
//! (negative for a hole left by a deleted entry, zero or missing at the end) followed by the
//! entry: component count (including the realm in 0x0501), realm and components as 16-bit-length
//! strings, name type (absent in 0x0501), timestamp, 8-bit kvno, key type, key, and, when at least
//! four bytes of the record remain, a 32-bit kvno that supersedes the 8-bit one unless it is 0.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::crypto::{CryptoError, EncType, Key};

/// NT-PRINCIPAL (RFC 4120 §6.2), the name type [`Principal::parse`] gives.
pub const NT_PRINCIPAL: i32 = 1;
/// NT-SRV-INST (RFC 4120 §6.2), conventionally used for service principals such as `HTTP/host`.
pub const NT_SRV_INST: i32 = 2;

/// Why a keytab or principal name could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeytabError {
    /// The keytab file could not be read or written.
    #[error("could not access keytab {}", path.display())]
    Io {
        /// The keytab's path.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The data does not start with a keytab header (0x05 0x01 or 0x05 0x02).
    #[error("not a keytab: the header is not 0x0501 or 0x0502")]
    NotAKeytab,
    /// The data ends in the middle of a header or record.
    #[error("keytab is truncated at byte {offset}")]
    Truncated {
        /// Where the missing data should have been.
        offset: usize,
    },
    /// A record whose fields do not fit its length or hold invalid values.
    #[error("keytab record at byte {offset} is malformed: {reason}")]
    Malformed {
        /// Offset of the record's length field.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A record's key does not suit its etype (e.g. a 16-byte aes256 key).
    #[error("keytab record at byte {offset} has an unusable key")]
    BadKey {
        /// Offset of the record's length field.
        offset: usize,
        /// Why the key was refused.
        #[source]
        source: CryptoError,
    },
    /// A principal name that cannot be parsed.
    #[error("principal name {name:?} is malformed: {reason}")]
    BadPrincipal {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A principal name without `@REALM`, and no default realm to complete it.
    #[error("principal name {0:?} has no realm and no default realm was given")]
    MissingRealm(String),
}

/// A Kerberos principal name: components, realm and name type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The realm, e.g. `TEST.LOCAL`.
    pub realm: String,
    /// The name components, e.g. `["HTTP", "seg.test.local"]`.
    pub components: Vec<String>,
    /// The name type (RFC 4120 §6.2), e.g. [`NT_PRINCIPAL`].
    pub name_type: i32,
}

impl Principal {
    /// Parses `comp1/comp2@REALM` (MIT's syntax: `\` escapes `/`, `@` and `\`, and `\n`, `\t`,
    /// `\b`, `\0` stand for those bytes), using `default_realm` when there is no `@REALM`.
    ///
    /// The name type is always [`NT_PRINCIPAL`]; callers set another when the protocol needs it
    /// (e.g. [`NT_SRV_INST`]). Keytab lookups ignore it. Errs with
    /// [`KeytabError::BadPrincipal`] for an empty name, component or realm, a trailing `\`, or a
    /// second unescaped `@`, and [`KeytabError::MissingRealm`] when no realm is known.
    pub fn parse(s: &str, default_realm: Option<&str>) -> Result<Principal, KeytabError> {
        let bad = |reason| KeytabError::BadPrincipal {
            name: s.to_owned(),
            reason,
        };
        let mut components = Vec::new();
        let mut current = String::new();
        let mut realm: Option<String> = None;
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            let literal = match c {
                '\\' => match chars.next() {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('b') => '\u{8}',
                    Some('0') => '\0',
                    Some(other) => other,
                    None => return Err(bad("it ends with a lone backslash")),
                },
                '/' if realm.is_none() => {
                    components.push(std::mem::take(&mut current));
                    continue;
                }
                '@' => {
                    if realm.is_some() {
                        return Err(bad("it has two unescaped '@'"));
                    }
                    components.push(std::mem::take(&mut current));
                    realm = Some(String::new());
                    continue;
                }
                other => other,
            };
            match realm.as_mut() {
                Some(r) => r.push(literal),
                None => current.push(literal),
            }
        }
        let realm = match realm {
            Some(r) if !r.is_empty() => r,
            Some(_) => return Err(bad("the realm after '@' is empty")),
            None => {
                components.push(current);
                match default_realm {
                    Some(r) if !r.is_empty() => r.to_owned(),
                    _ => return Err(KeytabError::MissingRealm(s.to_owned())),
                }
            }
        };
        if components.iter().any(String::is_empty) {
            return Err(bad("it has an empty name component"));
        }
        Ok(Principal {
            realm,
            components,
            name_type: NT_PRINCIPAL,
        })
    }

    /// Whether `other` names the same principal as keytab lookups see it: components equal
    /// byte for byte, realms equal ignoring ASCII case, name types ignored.
    pub fn matches(&self, other: &Principal) -> bool {
        self.components == other.components && self.realm.eq_ignore_ascii_case(&other.realm)
    }

    /// The default salt for password-derived keys: realm then components, unseparated.
    pub fn default_salt(&self) -> String {
        let mut salt = self.realm.clone();
        for c in &self.components {
            salt.push_str(c);
        }
        salt
    }
}

/// Writes `s` with the characters that `Principal::parse` treats specially escaped.
fn write_escaped(f: &mut fmt::Formatter<'_>, s: &str, in_realm: bool) -> fmt::Result {
    for c in s.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '@' => f.write_str("\\@")?,
            '/' if !in_realm => f.write_str("\\/")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\u{8}' => f.write_str("\\b")?,
            '\0' => f.write_str("\\0")?,
            other => write!(f, "{other}")?,
        }
    }
    Ok(())
}

impl fmt::Display for Principal {
    /// `comp1/comp2@REALM`, escaped so that [`Principal::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.components.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            write_escaped(f, c, false)?;
        }
        f.write_str("@")?;
        write_escaped(f, &self.realm, true)
    }
}

/// One key of one principal in a keytab.
#[derive(Debug, Clone)]
pub struct KeytabEntry {
    /// Whose key this is.
    pub principal: Principal,
    /// When the entry was written, seconds since the Unix epoch.
    pub timestamp: u32,
    /// The key version number.
    pub kvno: u32,
    /// The key and its etype.
    pub key: Key,
}

/// The entries of an MIT keytab.
#[derive(Debug, Clone, Default)]
pub struct Keytab {
    entries: Vec<KeytabEntry>,
}

/// A cursor over untrusted bytes: every read is bounds-checked, nothing is allocated from a
/// length field before the bytes it describes are known to be there.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of `data[0]` in the whole file, for error messages.
    base: usize,
    little_endian: bool,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeytabError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.data.len());
        let Some(end) = end else {
            return Err(KeytabError::Truncated {
                offset: self.base + self.data.len(),
            });
        };
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], KeytabError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, KeytabError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, KeytabError> {
        let b = self.array()?;
        Ok(if self.little_endian {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32(&mut self) -> Result<u32, KeytabError> {
        let b = self.array()?;
        Ok(if self.little_endian {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    fn counted(&mut self) -> Result<&'a [u8], KeytabError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
}

impl Keytab {
    /// An empty keytab.
    pub fn new() -> Keytab {
        Keytab::default()
    }

    /// Adds an entry at the end.
    pub fn push(&mut self, entry: KeytabEntry) {
        self.entries.push(entry);
    }

    /// Parses a keytab file's contents.
    ///
    /// Errs with [`KeytabError::NotAKeytab`] for a wrong header, [`KeytabError::Truncated`] when
    /// a record runs past the end, [`KeytabError::Malformed`] when a record's fields do not fit
    /// its length or a name is not UTF-8, and [`KeytabError::BadKey`] for a key of the wrong
    /// length. Entries of unsupported etypes are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Keytab, KeytabError> {
        let little_endian = match bytes {
            [0x05, 0x02, ..] => false,
            [0x05, 0x01, ..] => true,
            _ if bytes.len() < 2 && bytes.first().is_none_or(|&b| b == 0x05) => {
                return Err(KeytabError::Truncated {
                    offset: bytes.len(),
                });
            }
            _ => return Err(KeytabError::NotAKeytab),
        };
        let v1 = little_endian;
        let mut file = Reader {
            data: bytes,
            pos: 2,
            base: 0,
            little_endian,
        };
        let mut entries = Vec::new();
        // MIT stops at end of file, or at a length field that is cut short or zero.
        while file.remaining() >= 4 {
            let offset = file.pos;
            let size = file.u32()? as i32;
            if size == 0 {
                break;
            }
            // A negative length marks a hole left by a deleted entry: skip its bytes.
            let record = file.take(size.unsigned_abs() as usize)?;
            if size < 0 {
                continue;
            }
            let mut r = Reader {
                data: record,
                pos: 0,
                base: offset + 4,
                little_endian,
            };
            if let Some(entry) = parse_record(&mut r, v1, offset)? {
                entries.push(entry);
            }
        }
        Ok(Keytab { entries })
    }

    /// Reads and parses the keytab file at `path`; errs as [`Keytab::parse`] does, or with
    /// [`KeytabError::Io`].
    pub fn read(path: &Path) -> Result<Keytab, KeytabError> {
        let bytes = std::fs::read(path).map_err(|source| KeytabError::Io {
            path: path.to_owned(),
            source,
        })?;
        // The key bytes in the file buffer are wiped once parsed into `Key`s.
        let bytes = zeroize::Zeroizing::new(bytes);
        Keytab::parse(&bytes)
    }

    /// Writes the keytab in format 0x0502 to `path`, replacing any file there; errs with
    /// [`KeytabError::Io`].
    pub fn write(&self, path: &Path) -> Result<(), KeytabError> {
        let bytes = zeroize::Zeroizing::new(self.to_bytes());
        std::fs::write(path, &*bytes).map_err(|source| KeytabError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The keytab in format 0x0502, with the 32-bit kvno extension on every record as MIT writes.
    ///
    /// A name component longer than 65535 bytes, which the format cannot hold and no KDC issues,
    /// is cut to that length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0x05, 0x02];
        for entry in &self.entries {
            let mut record = Vec::new();
            let p = &entry.principal;
            let count = u16::try_from(p.components.len()).unwrap_or(u16::MAX);
            record.extend_from_slice(&count.to_be_bytes());
            put_counted(&mut record, p.realm.as_bytes());
            for c in p.components.iter().take(usize::from(count)) {
                put_counted(&mut record, c.as_bytes());
            }
            record.extend_from_slice(&p.name_type.to_be_bytes());
            record.extend_from_slice(&entry.timestamp.to_be_bytes());
            // The 8-bit field holds the low byte; readers take the 32-bit kvno after the key.
            record.push(entry.kvno as u8);
            let etype = u16::try_from(entry.key.etype().as_i32()).unwrap_or(0);
            record.extend_from_slice(&etype.to_be_bytes());
            put_counted(&mut record, entry.key.bytes());
            record.extend_from_slice(&entry.kvno.to_be_bytes());
            let size = u32::try_from(record.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&record);
            zeroize::Zeroize::zeroize(&mut record);
        }
        out
    }

    /// All entries of supported etypes, in file order.
    pub fn entries(&self) -> &[KeytabEntry] {
        &self.entries
    }

    /// Highest-kvno key for the principal (matched case-sensitively on components, realm case-insensitively) and etype.
    ///
    /// Of several entries with the same highest kvno, the first in the file wins, as in MIT.
    pub fn key_for(&self, principal: &Principal, etype: EncType) -> Option<&KeytabEntry> {
        let mut best: Option<&KeytabEntry> = None;
        for entry in &self.entries {
            if entry.key.etype() == etype
                && entry.principal.matches(principal)
                && best.is_none_or(|b| entry.kvno > b.kvno)
            {
                best = Some(entry);
            }
        }
        best
    }

    /// Each distinct principal once (as [`Principal::matches`] compares them), in file order.
    pub fn principals(&self) -> Vec<&Principal> {
        let mut seen: Vec<&Principal> = Vec::new();
        for entry in &self.entries {
            if !seen.iter().any(|p| p.matches(&entry.principal)) {
                seen.push(&entry.principal);
            }
        }
        seen
    }
}

fn put_counted(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

fn utf8(bytes: &[u8], offset: usize) -> Result<String, KeytabError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| KeytabError::Malformed {
        offset,
        reason: "a name is not UTF-8",
    })
}

/// Parses one record; `Ok(None)` for a well-formed entry of an etype we do not implement.
fn parse_record(
    r: &mut Reader<'_>,
    v1: bool,
    offset: usize,
) -> Result<Option<KeytabEntry>, KeytabError> {
    // Inside a record, running out of bytes means the record's own length was wrong.
    let malformed = |_| KeytabError::Malformed {
        offset,
        reason: "its fields run past its length",
    };
    let mut count = r.u16().map_err(malformed)?;
    if v1 {
        // 0x0501 counted the realm as a component.
        count = count.checked_sub(1).ok_or(KeytabError::Malformed {
            offset,
            reason: "it has no realm",
        })?;
    }
    let realm = utf8(r.counted().map_err(malformed)?, offset)?;
    // No `with_capacity(count)`: each component is checked to be present before it is kept.
    let mut components = Vec::new();
    for _ in 0..count {
        components.push(utf8(r.counted().map_err(malformed)?, offset)?);
    }
    let name_type = if v1 {
        NT_PRINCIPAL
    } else {
        r.u32().map_err(malformed)? as i32
    };
    let timestamp = r.u32().map_err(malformed)?;
    let kvno8 = r.u8().map_err(malformed)?;
    let etype = r.u16().map_err(malformed)?;
    let key_bytes = r.counted().map_err(malformed)?;
    let mut kvno = u32::from(kvno8);
    if r.remaining() >= 4 {
        // MIT writes zero-fill here too; only a non-zero value is a kvno.
        let kvno32 = r.u32().map_err(malformed)?;
        if kvno32 != 0 {
            kvno = kvno32;
        }
    }
    let Some(etype) = EncType::from_i32(i32::from(etype)) else {
        return Ok(None);
    };
    let key =
        Key::new(etype, key_bytes).map_err(|source| KeytabError::BadKey { offset, source })?;
    if components.is_empty() {
        return Err(KeytabError::Malformed {
            offset,
            reason: "its principal has no name components",
        });
    }
    Ok(Some(KeytabEntry {
        principal: Principal {
            realm,
            components,
            name_type,
        },
        timestamp,
        kvno,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn entry(principal: &str, kvno: u32, etype: EncType, fill: u8) -> KeytabEntry {
        KeytabEntry {
            principal: Principal::parse(principal, None).unwrap(),
            timestamp: 1_700_000_000,
            kvno,
            key: Key::new(etype, &vec![fill; etype.key_len()]).unwrap(),
        }
    }

    fn sample() -> Keytab {
        let mut kt = Keytab::new();
        kt.push(entry(
            "HTTP/seg.test.local@TEST.LOCAL",
            2,
            EncType::Aes256CtsHmacSha196,
            1,
        ));
        kt.push(entry(
            "HTTP/seg.test.local@TEST.LOCAL",
            3,
            EncType::Aes256CtsHmacSha196,
            2,
        ));
        kt.push(entry(
            "HTTP/seg.test.local@TEST.LOCAL",
            3,
            EncType::Rc4Hmac,
            3,
        ));
        kt.push(entry(
            "svc-seg@CORP.EXAMPLE",
            300,
            EncType::Aes128CtsHmacSha256128,
            4,
        ));
        kt
    }

    #[test]
    fn principal_parse_and_display() {
        let p = Principal::parse("HTTP/seg.test.local@TEST.LOCAL", None).unwrap();
        assert_eq!(p.components, ["HTTP", "seg.test.local"]);
        assert_eq!(p.realm, "TEST.LOCAL");
        assert_eq!(p.name_type, NT_PRINCIPAL);
        assert_eq!(p.to_string(), "HTTP/seg.test.local@TEST.LOCAL");

        let p = Principal::parse("svc-seg", Some("CORP.EXAMPLE")).unwrap();
        assert_eq!(p.to_string(), "svc-seg@CORP.EXAMPLE");
        assert_eq!(p.default_salt(), "CORP.EXAMPLEsvc-seg");

        // An enterprise name keeps its escaped '@' in the component.
        let p = Principal::parse(r"alice\@corp.example@TEST.LOCAL", None).unwrap();
        assert_eq!(p.components, ["alice@corp.example"]);
        assert_eq!(p.to_string(), r"alice\@corp.example@TEST.LOCAL");
        assert_eq!(Principal::parse(&p.to_string(), None).unwrap(), p);
    }

    #[test]
    fn principal_parse_rejects_malformed_names() {
        assert!(matches!(
            Principal::parse("alice", None),
            Err(KeytabError::MissingRealm(_))
        ));
        for bad in [
            "",
            "@TEST.LOCAL",
            "alice@",
            "a//b@R",
            "/a@R",
            "a@R@S",
            "a\\",
        ] {
            assert!(
                matches!(
                    Principal::parse(bad, Some("R")),
                    Err(KeytabError::BadPrincipal { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn round_trip_and_lookup() {
        let kt = Keytab::parse(&sample().to_bytes()).unwrap();
        assert_eq!(kt.entries().len(), 4);
        let http = Principal::parse("HTTP/seg.test.local@test.local", None).unwrap();
        let e = kt.key_for(&http, EncType::Aes256CtsHmacSha196).unwrap();
        assert_eq!((e.kvno, e.key.bytes()[0]), (3, 2));
        assert_eq!(e.timestamp, 1_700_000_000);
        assert_eq!(kt.key_for(&http, EncType::Rc4Hmac).unwrap().kvno, 3);
        assert!(kt.key_for(&http, EncType::Aes128CtsHmacSha196).is_none());
        // Components are case-sensitive.
        let upper = Principal::parse("HTTP/SEG.TEST.LOCAL@TEST.LOCAL", None).unwrap();
        assert!(kt.key_for(&upper, EncType::Aes256CtsHmacSha196).is_none());
        // A kvno above 255 survives through the 32-bit extension.
        let svc = Principal::parse("svc-seg@CORP.EXAMPLE", None).unwrap();
        assert_eq!(
            kt.key_for(&svc, EncType::Aes128CtsHmacSha256128)
                .unwrap()
                .kvno,
            300
        );
        let names: Vec<String> = kt.principals().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            names,
            ["HTTP/seg.test.local@TEST.LOCAL", "svc-seg@CORP.EXAMPLE"]
        );
        assert_eq!(kt.to_bytes(), sample().to_bytes());
    }

    /// A record as MIT lays it out, by hand: version 0x0502, one entry.
    fn mit_record(etype: u16, key: &[u8], trailer: &[u8]) -> Vec<u8> {
        let mut rec = Vec::new();
        rec.extend_from_slice(&1u16.to_be_bytes());
        rec.extend_from_slice(&[0, 10]);
        rec.extend_from_slice(b"TEST.LOCAL");
        rec.extend_from_slice(&[0, 5]);
        rec.extend_from_slice(b"alice");
        rec.extend_from_slice(&1u32.to_be_bytes());
        rec.extend_from_slice(&0x6b06_e944u32.to_be_bytes());
        rec.push(7);
        rec.extend_from_slice(&etype.to_be_bytes());
        rec.extend_from_slice(&u16::try_from(key.len()).unwrap().to_be_bytes());
        rec.extend_from_slice(key);
        rec.extend_from_slice(trailer);
        let mut out = u32::try_from(rec.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(&rec);
        out
    }

    #[test]
    fn kvno_extension_holes_and_unknown_etypes() {
        let mut file = vec![0x05, 0x02];
        // A hole of 6 bytes left by a deleted entry.
        file.extend_from_slice(&(-6i32).to_be_bytes());
        file.extend_from_slice(&[0xEE; 6]);
        // DES-CBC-CRC (1) is skipped.
        file.extend_from_slice(&mit_record(1, &[0x11; 8], &[]));
        // No 32-bit kvno: the 8-bit one (7) counts.
        file.extend_from_slice(&mit_record(23, &[0x22; 16], &[]));
        // A zero 32-bit kvno is padding: still 7.
        file.extend_from_slice(&mit_record(23, &[0x33; 16], &[0, 0, 0, 0]));
        // A non-zero 32-bit kvno wins.
        file.extend_from_slice(&mit_record(23, &[0x44; 16], &[0, 0, 1, 4]));
        // A zero length ends the entries; whatever follows is ignored.
        file.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0xFF]);
        let kt = Keytab::parse(&file).unwrap();
        let kvnos: Vec<(u32, u8)> = kt
            .entries()
            .iter()
            .map(|e| (e.kvno, e.key.bytes()[0]))
            .collect();
        assert_eq!(kvnos, [(7, 0x22), (7, 0x33), (260, 0x44)]);
    }

    #[test]
    fn version_0x0501_is_read_little_endian_with_the_realm_counted() {
        let mut file = vec![0x05, 0x01];
        let mut rec = Vec::new();
        rec.extend_from_slice(&3u16.to_le_bytes()); // realm + 2 components
        for s in ["TEST.LOCAL", "HTTP", "seg"] {
            rec.extend_from_slice(&u16::try_from(s.len()).unwrap().to_le_bytes());
            rec.extend_from_slice(s.as_bytes());
        }
        rec.extend_from_slice(&5u32.to_le_bytes()); // timestamp; no name type in 0x0501
        rec.push(9);
        rec.extend_from_slice(&17u16.to_le_bytes());
        rec.extend_from_slice(&16u16.to_le_bytes());
        rec.extend_from_slice(&[0x55; 16]);
        file.extend_from_slice(&u32::try_from(rec.len()).unwrap().to_le_bytes());
        file.extend_from_slice(&rec);
        let kt = Keytab::parse(&file).unwrap();
        let e = &kt.entries()[0];
        assert_eq!(e.principal.to_string(), "HTTP/seg@TEST.LOCAL");
        assert_eq!(
            (e.timestamp, e.kvno, e.key.etype()),
            (5, 9, EncType::Aes128CtsHmacSha196)
        );
    }

    #[test]
    fn hostile_input_is_an_error_never_a_panic() {
        assert!(matches!(
            Keytab::parse(b""),
            Err(KeytabError::Truncated { .. })
        ));
        assert!(matches!(
            Keytab::parse(b"\x05"),
            Err(KeytabError::Truncated { .. })
        ));
        assert!(matches!(
            Keytab::parse(b"\x06\x02"),
            Err(KeytabError::NotAKeytab)
        ));
        assert!(matches!(
            Keytab::parse(b"\x05\x03"),
            Err(KeytabError::NotAKeytab)
        ));
        // Lengths claiming far more than the data holds.
        assert!(matches!(
            Keytab::parse(&[0x05, 0x02, 0x7F, 0xFF, 0xFF, 0xFF, 0, 1]),
            Err(KeytabError::Truncated { .. })
        ));
        assert!(Keytab::parse(&[0x05, 0x02, 0x80, 0, 0, 0, 0]).is_err());
        let mut huge_count = mit_record(18, &[0; 32], &[]);
        huge_count[4..6].copy_from_slice(&[0xFF, 0xFF]);
        let mut file = vec![0x05, 0x02];
        file.extend_from_slice(&huge_count);
        assert!(matches!(
            Keytab::parse(&file),
            Err(KeytabError::Malformed { .. })
        ));
        // A 16-byte key labelled aes256.
        let mut file = vec![0x05, 0x02];
        file.extend_from_slice(&mit_record(18, &[0; 16], &[]));
        assert!(matches!(
            Keytab::parse(&file),
            Err(KeytabError::BadKey { .. })
        ));

        // Every truncation of a valid file either parses (cut at a record boundary) or errs.
        let good = sample().to_bytes();
        for len in 0..good.len() {
            let _ = Keytab::parse(&good[..len]);
        }
        // Random bytes and random corruptions of a valid file: no panic.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (next() % 200) as usize;
            let mut junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if junk.len() >= 2 {
                junk[0] = 0x05;
                junk[1] = 0x01 + (next() % 2) as u8;
            }
            let _ = Keytab::parse(&junk);
            let mut corrupt = good.clone();
            for _ in 0..3 {
                let i = (next() as usize) % corrupt.len();
                corrupt[i] = next() as u8;
            }
            let _ = Keytab::parse(&corrupt);
        }
    }

    /// Cross-check against MIT: keys `ktutil` derives from a password, read through our parser,
    /// equal ours for every etype, and our writer reproduces MIT's file exactly.
    #[test]
    fn mit_ktutil_keys_match_from_password() {
        let ktutil = ["/usr/bin/ktutil", "/usr/sbin/ktutil"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(ktutil) = ktutil else {
            eprintln!("note: ktutil not installed; MIT cross-check skipped");
            return;
        };
        let password = "Sé-cret pässword 42!";
        let etypes = [
            EncType::Aes256CtsHmacSha196,
            EncType::Aes128CtsHmacSha196,
            EncType::Aes128CtsHmacSha256128,
            EncType::Aes256CtsHmacSha384192,
            EncType::Rc4Hmac,
        ];
        let path =
            std::env::temp_dir().join(format!("kcd-client-ktutil-{}.keytab", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut script = String::new();
        for etype in etypes {
            script.push_str(&format!(
                "addent -password -p alice@TEST.LOCAL -k 1 -e {}\n{password}\n",
                etype.name()
            ));
        }
        // A kvno above 255 only fits in the 32-bit extension.
        script.push_str(&format!(
            "addent -password -p svc@TEST.LOCAL -k 300 -e aes256-cts-hmac-sha1-96\n{password}\n"
        ));
        script.push_str(&format!("wkt {}\nquit\n", path.display()));
        let mut child = Command::new(ktutil)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ktutil");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(script.as_bytes()).expect("write to ktutil");
        }
        assert!(child.wait().expect("ktutil").success());
        let kt = Keytab::read(&path).expect("MIT keytab parses");
        let mit_bytes = std::fs::read(&path).expect("read MIT keytab");
        let _ = std::fs::remove_file(&path);

        let alice = Principal::parse("alice@TEST.LOCAL", None).unwrap();
        assert_eq!(kt.entries().len(), etypes.len() + 1);
        for etype in etypes {
            let entry = kt.key_for(&alice, etype).expect("ktutil wrote this etype");
            assert_eq!(entry.kvno, 1);
            let ours = Key::from_password(etype, password, &alice.default_salt(), None).unwrap();
            assert_eq!(entry.key.bytes(), ours.bytes(), "{etype}");
        }
        let svc = Principal::parse("svc@TEST.LOCAL", None).unwrap();
        let entry = kt.key_for(&svc, EncType::Aes256CtsHmacSha196).unwrap();
        assert_eq!(entry.kvno, 300);
        let ours = Key::from_password(
            EncType::Aes256CtsHmacSha196,
            password,
            "TEST.LOCALsvc",
            None,
        )
        .unwrap();
        assert_eq!(entry.key.bytes(), ours.bytes());
        // Writing back what we read gives MIT's file byte for byte.
        assert_eq!(kt.to_bytes(), mit_bytes);
    }
}
