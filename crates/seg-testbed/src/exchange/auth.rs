//! Authentication as IIS does it in front of EWS: Basic against the users file, Bearer JWTs
//! verified with the configured key, Negotiate (Kerberos in SPNEGO) accepted by the system
//! GSSAPI when a keytab is configured (see [`super::negotiate`]), and a refusal of NTLM, also
//! inside Negotiate. Failures get 401 with the `Negotiate`, `NTLM` and `Basic realm` challenges
//! as three headers.
//!
//! Which user a Kerberos client is: Active Directory gives every account the implicit UPN
//! `<sAMAccountName>@<DNS domain>`, and its realm is that domain in capitals, so the principal
//! `alice@TEST.LOCAL` is the user whose UPN is `alice@test.local`. The rule here is exactly that:
//! the principal, compared case-insensitively with the users' UPNs. Principals with an instance
//! (`HTTP/host@REALM`), which are services and not users, match nobody.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};

use super::User;
use super::negotiate::Acceptor;
use crate::token::TokenVerifier;

/// The first bytes of an NTLM message, which some clients wrap in `Negotiate`.
const NTLMSSP: &[u8] = b"NTLMSSP\0";

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// `Authorization: Basic`.
    Basic,
    /// `Authorization: Bearer`.
    Bearer,
    /// `Authorization: Negotiate`, Kerberos in SPNEGO.
    Negotiate,
}

/// The authenticated user, acting on its own mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The user principal name.
    pub upn: String,
    /// The user's mailbox address.
    pub mailbox: String,
    /// How it authenticated.
    pub method: Method,
    /// The GSSAPI token to return in `WWW-Authenticate: Negotiate` with the response, when the
    /// client asked for mutual authentication.
    pub negotiate_reply: Option<Vec<u8>>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Authorization` header, or a scheme not offered.
    NoCredentials,
    /// Basic credentials that match no user.
    BadPassword,
    /// A bearer token that failed verification or names no known user.
    BadToken(String),
    /// A scheme this server does not accept: NTLM (also inside Negotiate), or Negotiate
    /// without a keytab.
    Unsupported(&'static str),
    /// A Negotiate token that is not base64, is empty, was refused by GSSAPI (bad, replayed,
    /// unbound when Extended Protection requires bindings), or names no known user.
    BadNegotiate(String),
}

/// Checks the request's `Authorization` header against the users, the token verifier and the
/// Negotiate acceptor.
pub(crate) async fn authenticate(
    headers: &HeaderMap,
    users: &[User],
    verifier: Option<&TokenVerifier>,
    acceptor: Option<&Acceptor>,
) -> Result<Principal, Refusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::NoCredentials)?;
    let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("Basic") {
        let decoded = STANDARD
            .decode(credentials)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(Refusal::BadPassword)?;
        let (name, password) = decoded.split_once(':').ok_or(Refusal::BadPassword)?;
        let user = find_user(users, name)
            .filter(|u| u.password == password)
            .ok_or(Refusal::BadPassword)?;
        Ok(principal(user, Method::Basic))
    } else if scheme.eq_ignore_ascii_case("Bearer") {
        let verifier =
            verifier.ok_or_else(|| Refusal::BadToken("bearer tokens are not accepted".into()))?;
        let upn = verifier
            .verify(credentials)
            .map_err(|e| Refusal::BadToken(e.to_string()))?;
        let user = find_user(users, &upn)
            .ok_or_else(|| Refusal::BadToken(format!("no mailbox for {upn}")))?;
        Ok(principal(user, Method::Bearer))
    } else if scheme.eq_ignore_ascii_case("Negotiate") {
        // Decoded before anything else: garbage never reaches the GSSAPI.
        let token = negotiate_token(credentials)?;
        let acceptor = acceptor.ok_or(Refusal::Unsupported("Negotiate"))?;
        let accepted = acceptor
            .accept(token)
            .await
            .map_err(Refusal::BadNegotiate)?;
        let user = find_kerberos_user(users, &accepted.client)
            .ok_or_else(|| Refusal::BadNegotiate(format!("no mailbox for {}", accepted.client)))?;
        Ok(Principal {
            negotiate_reply: accepted.reply,
            ..principal(user, Method::Negotiate)
        })
    } else if scheme.eq_ignore_ascii_case("NTLM") {
        Err(Refusal::Unsupported("NTLM"))
    } else {
        Err(Refusal::NoCredentials)
    }
}

/// Whether the request authenticates with Windows authentication (`Negotiate` or `NTLM`, any
/// case), which IIS serves over HTTP/1.1 only.
pub(crate) fn is_windows_auth(headers: &HeaderMap) -> bool {
    headers.get_all(header::AUTHORIZATION).iter().any(|value| {
        let value = value.as_bytes().trim_ascii_start();
        let scheme = value.split(|&b| b == b' ').next().unwrap_or_default();
        scheme.eq_ignore_ascii_case(b"Negotiate") || scheme.eq_ignore_ascii_case(b"NTLM")
    })
}

/// The binary token of `Authorization: Negotiate <base64>`, refused when it is not base64, is
/// empty, or is NTLM.
fn negotiate_token(credentials: &str) -> Result<Vec<u8>, Refusal> {
    let token = STANDARD
        .decode(credentials)
        .map_err(|_| Refusal::BadNegotiate("the token is not base64".into()))?;
    if token.is_empty() {
        return Err(Refusal::BadNegotiate("the token is empty".into()));
    }
    if token.starts_with(NTLMSSP) {
        return Err(Refusal::Unsupported("NTLM"));
    }
    Ok(token)
}

/// The user a Kerberos principal (`alice@TEST.LOCAL`) is: the one whose UPN is the principal,
/// case-insensitively (see the module documentation).
fn find_kerberos_user<'a>(users: &'a [User], client: &str) -> Option<&'a User> {
    let (name, _realm) = client.rsplit_once('@')?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    users.iter().find(|u| u.upn.eq_ignore_ascii_case(client))
}

/// Finds a user by UPN, case-insensitively; `DOMAIN\user` is matched on the part before `@`.
fn find_user<'a>(users: &'a [User], name: &str) -> Option<&'a User> {
    users
        .iter()
        .find(|u| u.upn.eq_ignore_ascii_case(name))
        .or_else(|| {
            let (_, account) = name.split_once('\\')?;
            users.iter().find(|u| {
                u.upn
                    .split_once('@')
                    .is_some_and(|(local, _)| local.eq_ignore_ascii_case(account))
            })
        })
}

fn principal(user: &User, method: Method) -> Principal {
    Principal {
        upn: user.upn.clone(),
        mailbox: user.mailbox.clone(),
        method,
        negotiate_reply: None,
    }
}

/// The `WWW-Authenticate` values of a 401, in Exchange's order: `Negotiate`, `NTLM`,
/// `Basic realm="<host>"`.
pub(crate) fn challenges(host: &str) -> Vec<HeaderValue> {
    let realm = host.replace(['"', '\\'], "");
    [
        "Negotiate".to_string(),
        "NTLM".to_string(),
        format!("Basic realm=\"{realm}\""),
    ]
    .into_iter()
    .filter_map(|v| HeaderValue::from_str(&v).ok())
    .collect()
}

/// The host name a client addressed (from `Host` or the URI authority), without the port.
pub(crate) fn request_host(headers: &HeaderMap, uri: &http::Uri) -> String {
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    match authority.parse::<http::uri::Authority>() {
        Ok(a) => a.host().to_string(),
        Err(_) => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<User> {
        vec![User {
            upn: "alice@test.local".into(),
            password: "s3cret".into(),
            mailbox: "alice@test.local".into(),
        }]
    }

    /// Authenticates against [`users`], without a Negotiate acceptor.
    fn check(headers: &HeaderMap, verifier: Option<&TokenVerifier>) -> Result<Principal, Refusal> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(authenticate(headers, &users(), verifier, None))
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        with_auth(&format!(
            "Basic {}",
            STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    #[test]
    fn basic_with_the_right_password_authenticates_case_insensitively() {
        let principal = check(&basic("ALICE@test.local", "s3cret"), None).unwrap();
        assert_eq!(principal.mailbox, "alice@test.local");
        assert_eq!(principal.method, Method::Basic);
        assert!(check(&basic("TEST\\alice", "s3cret"), None).is_ok());
    }

    #[test]
    fn wrong_password_missing_header_and_garbage_are_refused() {
        assert_eq!(
            check(&basic("alice@test.local", "nope"), None),
            Err(Refusal::BadPassword)
        );
        assert_eq!(check(&HeaderMap::new(), None), Err(Refusal::NoCredentials));
        assert_eq!(
            check(&with_auth("Basic !!!"), None),
            Err(Refusal::BadPassword)
        );
        assert_eq!(
            check(&with_auth("NTLM TlRMTVNTUAABAAAA"), None),
            Err(Refusal::Unsupported("NTLM"))
        );
    }

    #[test]
    fn bearer_tokens_are_verified_and_mapped_to_users() {
        let issuer = crate::token::TokenIssuer::generate("aud").unwrap();
        let verifier = issuer.verifier();
        let token = issuer
            .issue("alice@test.local", std::time::Duration::from_secs(60))
            .unwrap();
        let principal = check(&with_auth(&format!("Bearer {token}")), Some(&verifier)).unwrap();
        assert_eq!(principal.method, Method::Bearer);
        let stranger = issuer
            .issue("mallory@test.local", std::time::Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            check(&with_auth(&format!("Bearer {stranger}")), Some(&verifier)),
            Err(Refusal::BadToken(_))
        ));
        assert!(matches!(
            check(&with_auth(&format!("Bearer {token}")), None),
            Err(Refusal::BadToken(_))
        ));
    }

    #[test]
    fn garbage_negotiate_is_refused_before_any_gssapi_call() {
        // No acceptor is configured: a refusal other than `Unsupported("Negotiate")` shows the
        // header was judged without reaching for one.
        let not_base64 = Refusal::BadNegotiate("the token is not base64".into());
        assert_eq!(
            check(&with_auth("Negotiate !!!not base64"), None),
            Err(not_base64)
        );
        assert_eq!(
            check(&with_auth("Negotiate"), None),
            Err(Refusal::BadNegotiate("the token is empty".into()))
        );
        let ntlm = STANDARD.encode(b"NTLMSSP\0\x01\0\0\0\x07\x82\x08\xa2");
        assert_eq!(
            check(&with_auth(&format!("Negotiate {ntlm}")), None),
            Err(Refusal::Unsupported("NTLM"))
        );
        // A well-formed token reaches the acceptor, which this server does not have.
        assert_eq!(
            check(&with_auth("Negotiate YIIBAA=="), None),
            Err(Refusal::Unsupported("Negotiate"))
        );
    }

    #[test]
    fn kerberos_principals_map_to_the_user_with_that_upn() {
        let users = users();
        assert_eq!(
            find_kerberos_user(&users, "alice@TEST.LOCAL").map(|u| u.upn.as_str()),
            Some("alice@test.local")
        );
        assert!(find_kerberos_user(&users, "HTTP/alice@TEST.LOCAL").is_none());
        assert!(find_kerberos_user(&users, "alice@OTHER.REALM").is_none());
        assert!(find_kerberos_user(&users, "alice").is_none());
    }

    #[test]
    fn challenges_come_in_exchange_order() {
        let values: Vec<_> = challenges("mail.test.local")
            .into_iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            values,
            ["Negotiate", "NTLM", "Basic realm=\"mail.test.local\""]
        );
    }

    #[test]
    fn the_realm_host_drops_the_port() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8443"));
        assert_eq!(
            request_host(&headers, &"/EWS".parse().unwrap()),
            "127.0.0.1"
        );
    }
}
