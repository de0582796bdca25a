//! The parameters of an ActiveSync request (command, device id, device type, user), read from
//! its URI query in either form MS-ASHTTP 2.2.1.1.1 allows:
//!
//! - plain text: `?Cmd=Ping&User=alice&DeviceId=EAS1&DeviceType=iPhone` (names in any case,
//!   values percent-encoded);
//! - base64-encoded: `?jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l`, one base64 value holding a byte
//!   sequence (protocol version, command code, locale, device id, policy key, device type, then
//!   tagged command parameters such as `User`), which clients of protocol versions 12.1 to 16.1
//!   may send instead (Windows Mail and Windows Phone do).
//!
//! Both forms give the same [`ActiveSyncQuery`]: compliance decides on the device of a base64
//! request as on any other (a device id missed here would make a blocked device an unknown one,
//! which a policy allowing unknown devices lets through), and a base64 `Ping` is long-lived.
//!
//! ```
//! use ews_proxy_core::activesync::ActiveSyncQuery;
//!
//! let plain = ActiveSyncQuery::parse("Cmd=Ping&User=alice&DeviceId=EAS1&DeviceType=iPhone");
//! // The example of MS-ASHTTP 2.2.1.1.1.1: a Sync from device "v140Device", type "SmartPhone".
//! let base64 = ActiveSyncQuery::parse("jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l");
//! assert_eq!(plain.command.as_deref(), Some("Ping"));
//! assert_eq!(plain.device_id.as_deref(), Some("EAS1"));
//! assert_eq!(base64.command.as_deref(), Some("Sync"));
//! assert_eq!(base64.device_id.as_deref(), Some("v140Device"));
//! assert_eq!(base64.device_type.as_deref(), Some("SmartPhone"));
//! ```

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use std::borrow::Cow;

/// What an ActiveSync request's query says; a parameter the query does not carry is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActiveSyncQuery<'a> {
    /// The command (`Sync`, `Ping`, …), as named in the plain form or by its code in base64.
    pub command: Option<Cow<'a, str>>,
    /// The device id. A base64 device id that is not visible ASCII text (a GUID sent as its
    /// 16 bytes) is written as upper-case hex, the form consoles keep it in.
    pub device_id: Option<Cow<'a, str>>,
    /// The device type (`iPhone`, `WindowsMail`, …).
    pub device_type: Option<Cow<'a, str>>,
    /// The user, as the client names it (`User`).
    pub user: Option<Cow<'a, str>>,
    /// The query was the base64-encoded form.
    pub base64: bool,
    /// A parameter came twice with different values (`DeviceId=A&DeviceId=B`): the request is
    /// ambiguous, and the fields above hold the first values. Exchange (ASP.NET) would read
    /// both joined by a comma, so the gateway must not decide on either: refuse the request.
    pub conflicting: bool,
}

impl<'a> ActiveSyncQuery<'a> {
    /// Reads `query` (what follows `?`, without it). A query in neither form (malformed
    /// base64, a byte sequence cut short) says nothing: every field `None`.
    pub fn parse(query: &'a str) -> Self {
        let plain = Self::parse_plain(query);
        // A base64 value has no `&`, and no `name=` the plain form knows.
        if plain != ActiveSyncQuery::default() || query.contains('&') {
            return plain;
        }
        match decode_base64(query) {
            Some(decoded) => decoded,
            None => {
                if !query.is_empty() {
                    tracing::debug!("activesync query in neither the plain nor the base64 form");
                }
                plain
            }
        }
    }

    fn parse_plain(query: &'a str) -> Self {
        let mut parsed = ActiveSyncQuery::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            // An empty value names nothing (`DeviceId=`): as if absent.
            if value.is_empty() {
                continue;
            }
            let field = if key.eq_ignore_ascii_case("Cmd") {
                &mut parsed.command
            } else if key.eq_ignore_ascii_case("DeviceId") {
                &mut parsed.device_id
            } else if key.eq_ignore_ascii_case("DeviceType") {
                &mut parsed.device_type
            } else if key.eq_ignore_ascii_case("User") {
                &mut parsed.user
            } else {
                continue;
            };
            match field {
                // Ids, names and commands are compared without regard to ASCII case by
                // Exchange and the console alike.
                Some(first) => parsed.conflicting |= !first.eq_ignore_ascii_case(&value),
                None => *field = Some(value),
            }
        }
        parsed
    }

    /// Whether the command keeps its response open for minutes: `Ping`, a device's hanging
    /// request for changes.
    pub fn is_long_lived(&self) -> bool {
        self.command
            .as_deref()
            .is_some_and(crate::routing::is_long_lived_activesync_command)
    }

    /// Whether the command may hold back its whole answer for as long as the device's
    /// heartbeat: `Ping` or `Sync` ([`crate::routing::is_hanging_activesync_command`]).
    pub fn may_hang(&self) -> bool {
        self.command
            .as_deref()
            .is_some_and(crate::routing::is_hanging_activesync_command)
    }
}

/// The protocol versions that may use the base64 form (MS-ASHTTP 2.2.1.1.1.1), as their byte:
/// 12.1, 14.0, 14.1, 16.0, 16.1. Anything else is not a base64 query, whatever it decodes to.
const BASE64_VERSIONS: [u8; 5] = [121, 140, 141, 160, 161];

/// The tag of the `User` command parameter (MS-ASHTTP 2.2.1.1.1.1.3).
const USER_TAG: u8 = 8;

/// Standard base64 with or without its padding; `+`, `/` and `=` may come percent-encoded.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn decode_base64(query: &str) -> Option<ActiveSyncQuery<'static>> {
    let text: Cow<'_, [u8]> = percent_encoding::percent_decode_str(query).into();
    let bytes = BASE64.decode(&text).ok()?;
    let [version, command, _locale_low, _locale_high, rest @ ..] = bytes.as_slice() else {
        return None;
    };
    if !BASE64_VERSIONS.contains(version) {
        return None;
    }
    let (device_id, rest) = counted(rest)?;
    let (policy_key, rest) = counted(rest)?;
    if !matches!(policy_key.len(), 0 | 4) {
        return None;
    }
    let (device_type, mut parameters) = counted(rest)?;
    let mut user = None;
    while let [tag, rest @ ..] = parameters {
        let (value, rest) = counted(rest)?;
        if *tag == USER_TAG {
            user = text_of(value);
        }
        parameters = rest;
    }
    Some(ActiveSyncQuery {
        command: command_name(*command).map(Cow::Borrowed),
        device_id: device_id_of(device_id),
        device_type: text_of(device_type),
        user,
        base64: true,
        conflicting: false,
    })
}

/// A field of one length byte and that many bytes, and what follows it.
fn counted(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&length, rest) = bytes.split_first()?;
    let length = usize::from(length);
    (rest.len() >= length).then(|| rest.split_at(length))
}

fn text_of(bytes: &[u8]) -> Option<Cow<'static, str>> {
    let text = std::str::from_utf8(bytes).ok()?;
    (!text.is_empty()).then(|| Cow::Owned(text.to_owned()))
}

fn device_id_of(bytes: &[u8]) -> Option<Cow<'static, str>> {
    if bytes.is_empty() {
        return None;
    }
    // Text as the plain form would carry it (`Appl5K14358AQH`, `android-1f3a…`); a GUID's 16
    // bytes are all visible ASCII by chance about once in ten million.
    if bytes.iter().all(u8::is_ascii_graphic) {
        return text_of(bytes);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let hex = bytes
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0x0f)]])
        .map(char::from)
        .collect();
    Some(Cow::Owned(hex))
}

/// The command of a base64 query's command code (MS-ASHTTP 2.2.1.1.1.1.2).
fn command_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0 => "Sync",
        1 => "SendMail",
        2 => "SmartForward",
        3 => "SmartReply",
        4 => "GetAttachment",
        9 => "FolderSync",
        10 => "FolderCreate",
        11 => "FolderDelete",
        12 => "FolderUpdate",
        13 => "MoveItems",
        14 => "GetItemEstimate",
        15 => "MeetingResponse",
        16 => "Search",
        17 => "Settings",
        18 => "Ping",
        19 => "ItemOperations",
        20 => "Provision",
        21 => "ResolveRecipients",
        22 => "ValidateCert",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose;

    /// A base64 query as a client builds it: `parameters` are (tag, value) pairs.
    fn encode(
        version: u8,
        command: u8,
        device_id: &[u8],
        policy_key: &[u8],
        device_type: &[u8],
        parameters: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut bytes = vec![version, command, 0x09, 0x04];
        for field in [device_id, policy_key, device_type] {
            bytes.push(u8::try_from(field.len()).unwrap());
            bytes.extend_from_slice(field);
        }
        for (tag, value) in parameters {
            bytes.push(*tag);
            bytes.push(u8::try_from(value.len()).unwrap());
            bytes.extend_from_slice(value);
        }
        bytes
    }

    #[test]
    fn the_example_of_ms_ashttp_is_read() {
        let query = ActiveSyncQuery::parse("jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l");
        assert_eq!(
            query,
            ActiveSyncQuery {
                command: Some("Sync".into()),
                device_id: Some("v140Device".into()),
                device_type: Some("SmartPhone".into()),
                user: None,
                base64: true,
                conflicting: false,
            }
        );
        assert!(!query.is_long_lived());
    }

    #[test]
    fn a_base64_ping_with_a_user_and_a_policy_key_is_long_lived() {
        let bytes = encode(
            141,
            18,
            b"WP8DEVICE01",
            &[1, 2, 3, 4],
            b"WP8",
            &[(1, b"5"), (USER_TAG, b"alice@corp.example")],
        );
        // Clients percent-encode `+`, `/` and `=`; some leave the padding off.
        for text in [
            general_purpose::STANDARD.encode(&bytes),
            general_purpose::STANDARD_NO_PAD.encode(&bytes),
        ] {
            let escaped = text
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D");
            for query in [&text, &escaped] {
                let parsed = ActiveSyncQuery::parse(query);
                assert!(parsed.base64, "{query}");
                assert_eq!(parsed.command.as_deref(), Some("Ping"));
                assert!(parsed.is_long_lived());
                assert_eq!(parsed.device_id.as_deref(), Some("WP8DEVICE01"));
                assert_eq!(parsed.device_type.as_deref(), Some("WP8"));
                assert_eq!(parsed.user.as_deref(), Some("alice@corp.example"));
            }
        }
    }

    #[test]
    fn a_binary_device_id_is_upper_case_hex() {
        let guid = [
            0x3f, 0x2a, 0x00, 0xff, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0,
            0xb0, 0xc0,
        ];
        let query =
            general_purpose::STANDARD.encode(encode(140, 0, &guid, &[], b"WindowsMail", &[]));
        let parsed = ActiveSyncQuery::parse(&query);
        assert_eq!(
            parsed.device_id.as_deref(),
            Some("3F2A00FF102030405060708090A0B0C0")
        );
        // Text, punctuation and all, stays text.
        let text = encode(141, 0, b"android-1f3a_x", &[], b"Android", &[]);
        let query = general_purpose::STANDARD.encode(text);
        let parsed = ActiveSyncQuery::parse(&query);
        assert_eq!(parsed.device_id.as_deref(), Some("android-1f3a_x"));
    }

    #[test]
    fn a_malformed_or_foreign_base64_query_says_nothing() {
        let valid = encode(141, 18, b"DEV1", &[], b"WP8", &[(USER_TAG, b"bob")]);
        let cases = [
            // Cut inside the device type, inside a parameter, before the device id.
            valid[..valid.len() - 6].to_vec(),
            valid[..valid.len() - 1].to_vec(),
            valid[..4].to_vec(),
            // A protocol version that has no base64 form (2.5), a policy key of 3 bytes.
            encode(25, 18, b"DEV1", &[], b"WP8", &[]),
            encode(141, 18, b"DEV1", &[1, 2, 3], b"WP8", &[]),
        ];
        for bytes in cases {
            let query = general_purpose::STANDARD.encode(&bytes);
            assert_eq!(
                ActiveSyncQuery::parse(&query),
                ActiveSyncQuery::default(),
                "{bytes:?}"
            );
        }
        for query in ["", "%%%", "not base64!", "Zm9v"] {
            assert_eq!(ActiveSyncQuery::parse(query), ActiveSyncQuery::default());
        }
    }

    #[test]
    fn an_unknown_command_code_is_no_command() {
        let query = general_purpose::STANDARD.encode(encode(141, 99, b"DEV1", &[], b"WP8", &[]));
        let parsed = ActiveSyncQuery::parse(&query);
        assert_eq!(parsed.command, None);
        assert_eq!(parsed.device_id.as_deref(), Some("DEV1"));
    }

    #[test]
    fn the_plain_form_is_read_in_any_case_and_borrowed_when_it_can_be() {
        let parsed = ActiveSyncQuery::parse(
            "cmd=P%69ng&USER=alice%40corp.example&deviceid=EAS1&DeviceType=iPhone&Extra=1",
        );
        assert!(!parsed.base64);
        assert_eq!(parsed.command.as_deref(), Some("Ping"));
        assert_eq!(parsed.user.as_deref(), Some("alice@corp.example"));
        assert!(matches!(parsed.device_id, Some(Cow::Borrowed("EAS1"))));
        assert_eq!(parsed.device_type.as_deref(), Some("iPhone"));
        assert!(!ActiveSyncQuery::parse("Cmd=Pings").is_long_lived());
        assert!(!parsed.conflicting);
    }

    #[test]
    fn a_parameter_named_twice_with_different_values_is_a_conflict() {
        let twice = ActiveSyncQuery::parse("Cmd=Sync&DeviceId=BLOCKED1&DeviceId=GOOD1");
        assert!(twice.conflicting);
        assert_eq!(
            twice.device_id.as_deref(),
            Some("BLOCKED1"),
            "the first is kept"
        );
        // The same value again (in any case) and empty values are no conflict; an empty value
        // is no value.
        let same = ActiveSyncQuery::parse("Cmd=Sync&DeviceId=dev1&DeviceId=DEV1&User=&User=bob");
        assert!(!same.conflicting);
        assert_eq!(same.device_id.as_deref(), Some("dev1"));
        assert_eq!(same.user.as_deref(), Some("bob"));
        let empty = ActiveSyncQuery::parse("Cmd=Sync&DeviceId=X&DeviceId=");
        assert!(!empty.conflicting);
        assert_eq!(empty.device_id.as_deref(), Some("X"));
        assert_eq!(ActiveSyncQuery::parse("DeviceId=").device_id, None);
        for query in [
            "Cmd=Sync&cmd=Ping",
            "User=a&USER=b",
            "DeviceType=iPhone&DeviceType=WP8",
        ] {
            assert!(ActiveSyncQuery::parse(query).conflicting, "{query}");
        }
    }
}
