//! Who may sign in, and the signed-in sessions: random ids kept in memory with an expiry, each
//! with its own CSRF token.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, every configured token
//! each time (the time taken does not say which one, or whether any, matched). Session ids and
//! CSRF tokens are 32 random bytes from the operating system's generator, written as hex; the
//! store is keyed by the digest of the id, so a lookup does not compare the id itself.
//!
//! The sign-in form has no session yet: [`SignInGuard`] protects it by a signed double submit (a
//! random value in a `SameSite=Strict` cookie, and in a hidden field its HMAC under a key only
//! this process knows).
//!
//! ```
//! use admin_console::session::{Credentials, Sessions};
//! use std::time::Duration;
//!
//! let credentials = Credentials::new(Some("an-admin-token-of-16+"), [("carol", "carols-own-token-0001")]);
//! assert_eq!(credentials.check("carols-own-token-0001").as_deref(), Some("carol"));
//! assert_eq!(credentials.check("a-wrong-token-000000"), None);
//!
//! let sessions = Sessions::new(Duration::from_secs(60));
//! let (id, session) = sessions.open("carol".into());
//! assert_eq!(sessions.get(&id).unwrap().operator(), "carol");
//! assert!(session.csrf_matches(session.csrf()));
//! sessions.close(&id);
//! assert!(sessions.get(&id).is_none());
//! ```

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The operator name of whoever signs in with the admin token (`admin.token`), as the admin API
/// names its holder.
pub const ADMIN_TOKEN_OPERATOR: &str = "admin-token";

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// 32 random bytes as 64 hex digits.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// `bytes` as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sign-in form's CSRF protection, before any session exists: a signed double submit.
///
/// The sign-in page gets a random value ([`issue`](Self::issue)) that the console sets as a
/// cookie (`SameSite=Strict`, so a browser never sends it with a request another site starts)
/// and, in a hidden field, that value's HMAC-SHA256 under a random key of this guard. A sign-in
/// is accepted only when both came back and [match](Self::check): another site can neither
/// read the cookie nor compute the field, not even for a cookie it managed to plant. Cheap to
/// clone; clones share the key. A restart (a new key) invalidates the forms already shown.
///
/// ```
/// use admin_console::session::SignInGuard;
///
/// let guard = SignInGuard::new();
/// let (cookie, field) = guard.issue();
/// assert!(guard.check(Some(&cookie), Some(&field)));
/// assert!(!guard.check(None, Some(&field)), "a cross-site post carries no cookie");
/// assert!(!guard.check(Some(&cookie), None));
/// assert!(!SignInGuard::new().check(Some(&cookie), Some(&field)), "another key");
/// ```
#[derive(Clone)]
pub struct SignInGuard {
    key: Arc<[u8; 32]>,
}

impl Default for SignInGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl SignInGuard {
    /// A guard with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SignInGuard { key: Arc::new(key) }
    }

    /// A new pair for a sign-in form: the cookie's value (64 hex digits) and the hidden field's.
    pub fn issue(&self) -> (String, String) {
        let cookie = random_hex();
        let field = self.mac(&cookie);
        (cookie, field)
    }

    /// The hidden field's value for the cookie `cookie` a browser already holds, so that a
    /// second sign-in page (another tab) keeps the first one valid; `None` when `cookie` is not
    /// a value [`issue`](Self::issue) could have made.
    pub fn field_for(&self, cookie: &str) -> Option<String> {
        let well_formed = cookie.len() == 64 && cookie.bytes().all(|b| b.is_ascii_hexdigit());
        well_formed.then(|| self.mac(cookie))
    }

    /// The sign-in form's `field` belongs to the `cookie` that came with it (in constant time).
    pub fn check(&self, cookie: Option<&str>, field: Option<&str>) -> bool {
        let (Some(cookie), Some(field)) = (cookie, field) else {
            return false;
        };
        let Some(expected) = self.field_for(cookie) else {
            return false;
        };
        bool::from(digest(field.as_bytes()).ct_eq(&digest(expected.as_bytes())))
    }

    fn mac(&self, cookie: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..])
            .expect("HMAC takes a key of any length");
        mac.update(b"seg-console sign-in form\0");
        mac.update(cookie.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

impl fmt::Debug for SignInGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignInGuard")
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The tokens that sign in: the admin token and the named operators' tokens, as digests.
#[derive(Clone, Default)]
pub struct Credentials {
    tokens: Arc<Vec<(Arc<str>, [u8; 32])>>,
}

impl Credentials {
    /// The admin token (signing in as [`ADMIN_TOKEN_OPERATOR`]) when given and not empty, and
    /// `operators` as `(name, token)`; empty tokens are ignored.
    pub fn new<N, T>(admin_token: Option<&str>, operators: impl IntoIterator<Item = (N, T)>) -> Self
    where
        N: AsRef<str>,
        T: AsRef<str>,
    {
        let mut tokens = Vec::new();
        if let Some(token) = admin_token.filter(|t| !t.is_empty()) {
            tokens.push((Arc::from(ADMIN_TOKEN_OPERATOR), digest(token.as_bytes())));
        }
        for (name, token) in operators {
            let token = token.as_ref();
            if !token.is_empty() {
                tokens.push((Arc::from(name.as_ref()), digest(token.as_bytes())));
            }
        }
        Credentials {
            tokens: Arc::new(tokens),
        }
    }

    /// The operator whose token `given` is; `None` if it is nobody's. Compares with every token.
    pub fn check(&self, given: &str) -> Option<Arc<str>> {
        let given = digest(given.as_bytes());
        let mut found = None;
        for (name, expected) in self.tokens.iter() {
            if bool::from(given.ct_eq(expected)) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }

    /// No token can sign in.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "operators",
                &self.tokens.iter().map(|(n, _)| &**n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A signed-in operator's session.
#[derive(Clone)]
pub struct Session {
    operator: Arc<str>,
    csrf: Arc<str>,
    expires: Instant,
}

impl Session {
    /// Who signed in.
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// The CSRF token every state-changing form of this session carries.
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// `given` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, given: &str) -> bool {
        bool::from(digest(given.as_bytes()).ct_eq(&digest(self.csrf.as_bytes())))
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("operator", &self.operator)
            .field("csrf", &"<redacted>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// The open sessions, in memory: a restart signs everyone out. Cheap to clone; clones share.
#[derive(Clone)]
pub struct Sessions {
    ttl: Duration,
    open: Arc<Mutex<HashMap<[u8; 32], Session>>>,
}

impl Sessions {
    /// No sessions yet; each one opened lasts `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            open: Arc::default(),
        }
    }

    /// How long a session lasts.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Opens a session for `operator`: its id (for the cookie) and the session. Forgets the
    /// sessions that expired.
    pub fn open(&self, operator: Arc<str>) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            operator,
            csrf: random_hex().into(),
            expires: Instant::now() + self.ttl,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        open.retain(|_, s| s.expires > now);
        open.insert(digest(id.as_bytes()), session.clone());
        (id, session)
    }

    /// The session of `id`, if open and not expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let key = digest(id.as_bytes());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get(&key) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                open.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Closes the session of `id` (signing out); nothing if there is none.
    pub fn close(&self, id: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&digest(id.as_bytes()));
    }

    /// Sessions open now (expired ones not yet forgotten included).
    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    /// No session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("ttl", &self.ttl)
            .field("open", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_sign_in_as_their_operator() {
        let credentials = Credentials::new(
            Some("admin-token-0123456789"),
            [("dave", "daves-token-0123456789"), ("erin", "")],
        );
        assert_eq!(
            credentials.check("admin-token-0123456789").as_deref(),
            Some(ADMIN_TOKEN_OPERATOR)
        );
        assert_eq!(
            credentials.check("daves-token-0123456789").as_deref(),
            Some("dave")
        );
        assert_eq!(credentials.check(""), None, "an empty token is nobody's");
        assert_eq!(credentials.check("daves-token-012345678"), None);
        assert!(!format!("{credentials:?}").contains("daves-token"));
    }

    #[test]
    fn sessions_expire() {
        let sessions = Sessions::new(Duration::ZERO);
        let (id, _) = sessions.open("dave".into());
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn session_ids_and_csrf_tokens_are_random_and_distinct() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (a, sa) = sessions.open("dave".into());
        let (b, sb) = sessions.open("dave".into());
        assert_ne!(a, b);
        assert_ne!(sa.csrf(), sb.csrf());
        assert_eq!(a.len(), 64);
        assert!(sa.csrf_matches(sa.csrf()));
        assert!(!sa.csrf_matches(sb.csrf()));
        assert!(!sa.csrf_matches(""));
        assert!(sessions.get(&a[..63]).is_none());
    }

    #[test]
    fn a_sign_in_form_is_valid_only_with_its_own_cookie() {
        let guard = SignInGuard::new();
        let (cookie, field) = guard.issue();
        let (other_cookie, other_field) = guard.issue();
        assert_eq!(cookie.len(), 64);
        assert_ne!(cookie, other_cookie);
        assert_ne!(field, cookie, "the field is not the cookie itself");
        assert!(guard.check(Some(&cookie), Some(&field)));
        assert!(guard.check(Some(&other_cookie), Some(&other_field)));
        assert!(!guard.check(Some(&cookie), Some(&other_field)));
        assert!(
            !guard.check(Some(&cookie), Some(&cookie)),
            "plain double submit"
        );
        assert!(!guard.check(Some(&cookie), Some("")));
        assert!(!guard.check(None, None));
        assert_eq!(guard.field_for(&cookie).as_deref(), Some(field.as_str()));
        assert_eq!(guard.field_for("not-hex"), None);
        let planted = "a".repeat(64);
        let forged = hex(&Sha256::digest(planted.as_bytes()));
        assert!(!guard.check(Some(&planted), Some(&forged)));
        assert!(!format!("{guard:?}").contains(&hex(&guard.key[..])));
    }
}
