//! GSS-API token framing (RFC 2743 3.1) and SPNEGO (RFC 4178): what goes after
//! `Authorization: Negotiate` and what comes back in `WWW-Authenticate: Negotiate`.

use rasn::prelude::*;

use crate::KcdError;
use crate::asn1::{der_size, push_der_header};

/// The Kerberos V5 GSS-API mechanism (RFC 1964): `1.2.840.113554.1.2.2`.
pub const KRB5_OID: &[u32] = &[1, 2, 840, 113_554, 1, 2, 2];
/// Microsoft's alias of the Kerberos mechanism, listed first by Windows clients:
/// `1.2.840.48018.1.2.2`.
pub const MS_KRB5_OID: &[u32] = &[1, 2, 840, 48_018, 1, 2, 2];
/// SPNEGO (RFC 4178): `1.3.6.1.5.5.2`.
pub const SPNEGO_OID: &[u32] = &[1, 3, 6, 1, 5, 5, 2];

/// The DER of [`SPNEGO_OID`] and [`KRB5_OID`], and NegTokenInit's `mechTypes` field (`[0]`
/// around a SEQUENCE of [`MS_KRB5_OID`] and [`KRB5_OID`]), as rasn writes them (a test checks):
/// the gateway frames a token for every request it authenticates, by hand and in one buffer.
const SPNEGO_OID_DER: &[u8] = &[0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
const KRB5_OID_DER: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02,
];
const MECH_TYPES_FIELD: &[u8] = &[
    0xa0, 0x18, 0x30, 0x16, // [0] SEQUENCE OF
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02, // MS-KRB5
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, // KRB5
];
/// The Kerberos mechanism's token id of an AP-REQ (RFC 4121 4.1).
const TOK_ID_AP_REQ: [u8; 2] = [0x01, 0x00];

/// Initial tokens deeper than this many bytes are refused before any parsing.
const MAX_TOKEN: usize = 1 << 20;

/// NegTokenInit (RFC 4178 4.2.1): the initiator's mechanisms and its optimistic first token.
///
/// ```text
/// NegTokenInit ::= SEQUENCE {
///     mechTypes       [0] MechTypeList,
///     reqFlags        [1] ContextFlags  OPTIONAL,
///     mechToken       [2] OCTET STRING  OPTIONAL,
///     mechListMIC     [3] OCTET STRING  OPTIONAL,
///     ... }
/// ```
#[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
#[non_exhaustive]
pub struct NegTokenInit {
    /// The mechanisms, preferred first.
    #[rasn(tag(explicit(0)))]
    pub mech_types: SequenceOf<ObjectIdentifier>,
    /// Context flags (deprecated by RFC 4178; not sent).
    #[rasn(tag(explicit(1)))]
    pub req_flags: Option<BitString>,
    /// The first token of the first mechanism.
    #[rasn(tag(explicit(2)))]
    pub mech_token: Option<OctetString>,
    /// The MIC over the mechanism list.
    #[rasn(tag(explicit(3)))]
    pub mech_list_mic: Option<OctetString>,
}

/// The acceptor's verdict in a [`NegTokenResp`].
#[derive(AsnType, Clone, Copy, Debug, Decode, Encode, PartialEq, Eq)]
#[rasn(enumerated)]
pub enum NegState {
    /// Authentication is complete.
    AcceptCompleted = 0,
    /// More tokens are needed.
    AcceptIncomplete = 1,
    /// The acceptor refused.
    Reject = 2,
    /// The acceptor wants a mechListMIC.
    RequestMic = 3,
}

/// NegTokenResp (RFC 4178 4.2.2): the acceptor's answer.
///
/// ```text
/// NegTokenResp ::= SEQUENCE {
///     negState       [0] ENUMERATED { ... }  OPTIONAL,
///     supportedMech  [1] MechType      OPTIONAL,
///     responseToken  [2] OCTET STRING  OPTIONAL,
///     mechListMIC    [3] OCTET STRING  OPTIONAL,
///     ... }
/// ```
#[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
#[non_exhaustive]
pub struct NegTokenResp {
    /// The acceptor's verdict.
    #[rasn(tag(explicit(0)))]
    pub neg_state: Option<NegState>,
    /// The mechanism chosen.
    #[rasn(tag(explicit(1)))]
    pub supported_mech: Option<ObjectIdentifier>,
    /// The mechanism's answer (an AP-REP for Kerberos with mutual authentication).
    #[rasn(tag(explicit(2)))]
    pub response_token: Option<OctetString>,
    /// The MIC over the mechanism list.
    #[rasn(tag(explicit(3)))]
    pub mech_list_mic: Option<OctetString>,
}

/// NegotiationToken (RFC 4178 4.2): either message.
#[derive(AsnType, Clone, Debug, Decode, Encode, PartialEq, Eq)]
#[rasn(choice)]
pub enum NegotiationToken {
    /// The initiator's first message.
    #[rasn(tag(explicit(0)))]
    Init(NegTokenInit),
    /// Any later message (usually the acceptor's).
    #[rasn(tag(explicit(1)))]
    Resp(NegTokenResp),
}

/// Frames `inner` as a GSS-API initial context token (RFC 2743 3.1): `0x60`, the length, the
/// mechanism OID, then `inner` as is (it need not be DER: Kerberos puts a token id first).
pub fn frame_initial_token(mech: &[u32], inner: &[u8]) -> Result<Vec<u8>, KcdError> {
    let oid = ObjectIdentifier::new(mech.to_vec())
        .ok_or_else(|| KcdError::malformed("invalid mechanism OID"))?;
    let oid_der = crate::asn1::encode(&oid, "mechanism OID")?;
    let mut token = Vec::with_capacity(initial_token_size(&oid_der, inner.len()));
    push_initial_token_header(&mut token, &oid_der, inner.len());
    token.extend_from_slice(inner);
    Ok(token)
}

/// The Kerberos mechanism's initial context token around `ap_req` (DER): as
/// [`frame_initial_token`] with [`KRB5_OID`] and token id `01 00` (RFC 4121 4.1) before the
/// AP-REQ, written in one buffer.
pub(crate) fn frame_krb5_ap_req(ap_req: &[u8]) -> Vec<u8> {
    let inner_len = TOK_ID_AP_REQ.len() + ap_req.len();
    let mut token = Vec::with_capacity(initial_token_size(KRB5_OID_DER, inner_len));
    push_initial_token_header(&mut token, KRB5_OID_DER, inner_len);
    token.extend_from_slice(&TOK_ID_AP_REQ);
    token.extend_from_slice(ap_req);
    token
}

/// The size of a GSS-API initial context token whose mechanism OID is `oid_der` and whose
/// inner token is `inner_len` bytes long.
fn initial_token_size(oid_der: &[u8], inner_len: usize) -> usize {
    der_size(oid_der.len() + inner_len)
}

/// Writes a GSS-API initial context token's framing (`0x60`, the length, the mechanism OID)
/// before an inner token of `inner_len` bytes.
fn push_initial_token_header(out: &mut Vec<u8>, oid_der: &[u8], inner_len: usize) {
    push_der_header(out, 0x60, oid_der.len() + inner_len);
    out.extend_from_slice(oid_der);
}

/// Splits a GSS-API initial context token into its mechanism OID and inner bytes.
///
/// # Errors
///
/// [`KcdError::MalformedReply`] if the framing is wrong or truncated.
pub fn parse_initial_token(token: &[u8]) -> Result<(ObjectIdentifier, &[u8]), KcdError> {
    let bad = |what: &str| KcdError::malformed(format!("GSS-API token: {what}"));
    if token.len() > MAX_TOKEN {
        return Err(bad("too long"));
    }
    let rest = token
        .strip_prefix(&[0x60])
        .ok_or_else(|| bad("no 0x60 tag"))?;
    let (len, rest) = read_der_length(rest).ok_or_else(|| bad("bad length"))?;
    let body = rest.get(..len).ok_or_else(|| bad("truncated"))?;
    let (oid, inner) = rasn::der::decode_with_remainder::<ObjectIdentifier>(body)
        .map_err(|e| bad(&format!("mechanism OID: {e}")))?;
    Ok((oid, inner))
}

/// An SPNEGO initial token offering Kerberos, as Windows sends it: mechTypes
/// `[MS-KRB5, KRB5]` and the Kerberos token `krb5_token` as mechToken; the DER rasn writes for
/// that [`NegotiationToken::Init`], framed by [`frame_initial_token`] with [`SPNEGO_OID`].
///
/// Written by hand in one buffer (its headers, then `krb5_token` copied once), because one is
/// made for every request the gateway authenticates.
pub fn neg_token_init(krb5_token: &[u8]) -> Vec<u8> {
    // Inside out: mechToken [2] OCTET STRING, the NegTokenInit SEQUENCE, its [0] choice tag,
    // then the GSS-API framing with the SPNEGO OID.
    let octets = der_size(krb5_token.len());
    let mech_token_field = der_size(octets);
    let sequence_len = MECH_TYPES_FIELD.len() + mech_token_field;
    let choice_len = der_size(sequence_len);
    let inner_len = der_size(choice_len);
    let mut token = Vec::with_capacity(initial_token_size(SPNEGO_OID_DER, inner_len));
    push_initial_token_header(&mut token, SPNEGO_OID_DER, inner_len);
    push_der_header(&mut token, 0xa0, choice_len);
    push_der_header(&mut token, 0x30, sequence_len);
    token.extend_from_slice(MECH_TYPES_FIELD);
    push_der_header(&mut token, 0xa2, octets);
    push_der_header(&mut token, 0x04, krb5_token.len());
    token.extend_from_slice(krb5_token);
    token
}

/// Reads an SPNEGO token: an initial token (framed, with the SPNEGO OID) or a bare
/// NegotiationToken as acceptors answer.
///
/// # Errors
///
/// [`KcdError::MalformedReply`] for anything else.
pub fn parse_negotiation_token(token: &[u8]) -> Result<NegotiationToken, KcdError> {
    let inner = if token.first() == Some(&0x60) {
        let (oid, inner) = parse_initial_token(token)?;
        if &*oid != SPNEGO_OID {
            return Err(KcdError::malformed("GSS-API token: not SPNEGO"));
        }
        inner
    } else {
        token
    };
    if inner.len() > MAX_TOKEN {
        return Err(KcdError::malformed("SPNEGO token too long"));
    }
    rasn::der::decode::<NegotiationToken>(inner)
        .map_err(|e| KcdError::malformed(format!("SPNEGO token: {e}")))
}

fn read_der_length(input: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first < 0x80 {
        return Some((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 {
        return None;
    }
    let bytes = rest.get(..count)?;
    let len = bytes
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((len, rest.get(count..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_token_frame_round_trips_long_and_short() {
        for size in [0usize, 10, 200, 70_000] {
            let inner: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let token = frame_initial_token(KRB5_OID, &inner).unwrap();
            assert_eq!(token[0], 0x60);
            let (oid, parsed) = parse_initial_token(&token).unwrap();
            assert_eq!(&*oid, KRB5_OID);
            assert_eq!(parsed, &inner[..]);
        }
    }

    #[test]
    fn krb5_frame_bytes_match_rfc_1964() {
        let token = frame_initial_token(KRB5_OID, &[1, 0]).unwrap();
        assert_eq!(
            token,
            [
                0x60, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02, 1, 0
            ]
        );
    }

    #[test]
    fn neg_token_init_round_trips_and_lists_ms_krb5_first() {
        let token = neg_token_init(b"mech token");
        // 0x60, length, SPNEGO OID 06 06 2b 06 01 05 05 02, then [0] NegTokenInit.
        assert_eq!(
            &token[2..10],
            &[0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02]
        );
        assert_eq!(token[10], 0xa0);
        let NegotiationToken::Init(init) = parse_negotiation_token(&token).unwrap() else {
            panic!("not an init token");
        };
        assert_eq!(&*init.mech_types[0], MS_KRB5_OID);
        assert_eq!(&*init.mech_types[1], KRB5_OID);
        assert_eq!(init.mech_token.as_deref(), Some(&b"mech token"[..]));
    }

    /// Lengths around every change of a DER length's size.
    const SIZES: [usize; 11] = [0, 1, 10, 127, 128, 255, 256, 900, 65_535, 65_536, 70_000];

    #[test]
    fn the_oid_constants_are_rasns_der() {
        let der = |arcs: &[u32]| {
            crate::asn1::encode(&ObjectIdentifier::new(arcs.to_vec()).unwrap(), "OID").unwrap()
        };
        assert_eq!(SPNEGO_OID_DER, der(SPNEGO_OID));
        assert_eq!(KRB5_OID_DER, der(KRB5_OID));
        let mech_types: SequenceOf<ObjectIdentifier> = vec![
            ObjectIdentifier::new(MS_KRB5_OID.to_vec()).unwrap(),
            ObjectIdentifier::new(KRB5_OID.to_vec()).unwrap(),
        ];
        let mut field = vec![0xa0, 0x18];
        field.extend(crate::asn1::encode(&mech_types, "mechTypes").unwrap());
        assert_eq!(MECH_TYPES_FIELD, field);
    }

    #[test]
    fn the_hand_framed_tokens_are_what_rasn_writes() {
        for size in SIZES {
            let inner: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            // SPNEGO: rasn's NegotiationToken in the generic GSS-API framing.
            let init = NegotiationToken::Init(NegTokenInit {
                mech_types: vec![
                    ObjectIdentifier::new(MS_KRB5_OID.to_vec()).unwrap(),
                    ObjectIdentifier::new(KRB5_OID.to_vec()).unwrap(),
                ],
                req_flags: None,
                mech_token: Some(inner.clone().into()),
                mech_list_mic: None,
            });
            let by_rasn =
                frame_initial_token(SPNEGO_OID, &rasn::der::encode(&init).unwrap()).unwrap();
            assert!(
                neg_token_init(&inner) == by_rasn,
                "NegTokenInit, {size} bytes"
            );
            // Kerberos: token id and AP-REQ in the generic framing.
            let mut with_tok_id = TOK_ID_AP_REQ.to_vec();
            with_tok_id.extend_from_slice(&inner);
            let generic = frame_initial_token(KRB5_OID, &with_tok_id).unwrap();
            assert!(
                frame_krb5_ap_req(&inner) == generic,
                "Kerberos token, {size} bytes"
            );
            assert_eq!(der_size(size), {
                let mut header = Vec::new();
                push_der_header(&mut header, 0x04, size);
                header.len() + size
            });
        }
    }

    #[test]
    fn neg_token_resp_decodes_a_bare_accept_completed() {
        // What an acceptor sends without mutual authentication: a1 07 30 05 a0 03 0a 01 00.
        let token = [0xa1, 0x07, 0x30, 0x05, 0xa0, 0x03, 0x0a, 0x01, 0x00];
        let NegotiationToken::Resp(resp) = parse_negotiation_token(&token).unwrap() else {
            panic!("not a resp token");
        };
        assert_eq!(resp.neg_state, Some(NegState::AcceptCompleted));
        let again = rasn::der::encode(&NegotiationToken::Resp(resp)).unwrap();
        assert_eq!(again, token);
    }

    #[test]
    fn truncated_and_random_tokens_are_errors() {
        let token = neg_token_init(&[0x55; 300]);
        for end in 0..token.len() {
            assert!(
                parse_negotiation_token(&token[..end]).is_err(),
                "prefix {end}"
            );
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            let _ = parse_negotiation_token(&bytes);
            let _ = parse_initial_token(&bytes);
        }
    }
}
