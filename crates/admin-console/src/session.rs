//! Who may sign in, and the signed-in sessions: random ids kept in memory with an expiry, each
//! with its own CSRF token.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time, every configured token
//! each time (the time taken does not say which one, or whether any, matched). Session ids and
//! CSRF tokens are 32 random bytes from the operating system's generator, written as hex; the
//! store is keyed by the digest of the id, so a lookup does not compare the id itself.
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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
}
