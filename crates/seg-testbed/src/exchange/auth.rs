//! Authentication as IIS does it in front of EWS: Basic against the users file, Bearer JWTs
//! verified with the configured key, and, for now, a refusal of Negotiate and NTLM. Failures
//! get 401 with the `Negotiate`, `NTLM` and `Basic realm` challenges as three headers.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderValue, header};

use super::User;
use crate::token::TokenVerifier;

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// `Authorization: Basic`.
    Basic,
    /// `Authorization: Bearer`.
    Bearer,
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
    /// Negotiate or NTLM, which this stand-in does not accept yet.
    Unsupported(&'static str),
}

/// Checks the request's `Authorization` header against the users and the token verifier.
pub(crate) fn authenticate(
    headers: &HeaderMap,
    users: &[User],
    verifier: Option<&TokenVerifier>,
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
        Err(Refusal::Unsupported("Negotiate"))
    } else if scheme.eq_ignore_ascii_case("NTLM") {
        Err(Refusal::Unsupported("NTLM"))
    } else {
        Err(Refusal::NoCredentials)
    }
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
        let principal = authenticate(&basic("ALICE@test.local", "s3cret"), &users(), None).unwrap();
        assert_eq!(principal.mailbox, "alice@test.local");
        assert_eq!(principal.method, Method::Basic);
        assert!(authenticate(&basic("TEST\\alice", "s3cret"), &users(), None).is_ok());
    }

    #[test]
    fn wrong_password_missing_header_and_garbage_are_refused() {
        assert_eq!(
            authenticate(&basic("alice@test.local", "nope"), &users(), None),
            Err(Refusal::BadPassword)
        );
        assert_eq!(
            authenticate(&HeaderMap::new(), &users(), None),
            Err(Refusal::NoCredentials)
        );
        assert_eq!(
            authenticate(&with_auth("Basic !!!"), &users(), None),
            Err(Refusal::BadPassword)
        );
        assert_eq!(
            authenticate(&with_auth("NTLM TlRMTVNTUAABAAAA"), &users(), None),
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
        let principal = authenticate(
            &with_auth(&format!("Bearer {token}")),
            &users(),
            Some(&verifier),
        )
        .unwrap();
        assert_eq!(principal.method, Method::Bearer);
        let stranger = issuer
            .issue("mallory@test.local", std::time::Duration::from_secs(60))
            .unwrap();
        assert!(matches!(
            authenticate(
                &with_auth(&format!("Bearer {stranger}")),
                &users(),
                Some(&verifier)
            ),
            Err(Refusal::BadToken(_))
        ));
        assert!(matches!(
            authenticate(&with_auth(&format!("Bearer {token}")), &users(), None),
            Err(Refusal::BadToken(_))
        ));
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
