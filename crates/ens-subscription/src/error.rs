//! The one error type of this crate: EWS response codes, SOAP faults, and the HTTP-level
//! answers of the gateway, kept apart so that the caller can react to each.
//!
//! The distinction that matters most is [`EwsError::Blocked`]: the gateway refused the request
//! because the device is not compliant. ENS stops the device's subscription on it and waits for
//! an unblock, whereas every other error is retried as an error.
//!
//! ```
//! use ens_subscription::EwsError;
//! use std::time::Duration;
//!
//! let busy = EwsError::from_response_code("ErrorServerBusy", "slow down", Some(Duration::from_secs(2)));
//! assert!(matches!(busy, EwsError::ServerBusy { back_off } if back_off == Duration::from_secs(2)));
//! assert_eq!(busy.code(), Some("ErrorServerBusy"));
//! assert!(!busy.is_blocked());
//! ```

use std::time::Duration;

use http::StatusCode;

/// A boxed error of the HTTP service or of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong with an EWS call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EwsError {
    /// The gateway refused the request because the device is blocked by its compliance policy:
    /// `403` with `X-Compliance-Status: blocked; reason=<reason>`.
    #[error("the gateway blocked the device ({reason})")]
    Blocked {
        /// The machine-readable reason of the block (`enterprise-wiped`, `unknown-device`, …);
        /// empty when the header named none.
        reason: String,
    },
    /// The server or gateway refused the credentials (`401`).
    #[error("the credentials were refused")]
    Unauthorized,
    /// `ErrorSubscriptionNotFound`: the subscription does not exist (any more) on the server.
    #[error("the subscription was not found")]
    SubscriptionNotFound,
    /// `ErrorExpiredSubscription`: the subscription expired (a pull subscription not polled in
    /// time).
    #[error("the subscription expired")]
    ExpiredSubscription,
    /// `ErrorServerBusy`: the server throttles us; retry no sooner than `back_off`.
    #[error("the server is busy; retry after {back_off:?}")]
    ServerBusy {
        /// `BackOffMilliseconds` from the response's `MessageXml` (zero when absent).
        back_off: Duration,
    },
    /// `ErrorAccessDenied` or `ErrorSubscriptionAccessDenied` from Exchange (not a compliance
    /// block: the gateway's blocks are [`EwsError::Blocked`]).
    #[error("access denied: {message}")]
    AccessDenied {
        /// The response code.
        code: String,
        /// The server's `MessageText`.
        message: String,
    },
    /// `ErrorInvalidSubscription` or `ErrorInvalidPullSubscriptionId`: the id names a
    /// subscription of another kind, or none at all.
    #[error("invalid subscription ({code}): {message}")]
    InvalidSubscription {
        /// The response code.
        code: String,
        /// The server's `MessageText`.
        message: String,
    },
    /// Any other EWS error response code.
    #[error("exchange answered {code}: {message}")]
    Ews {
        /// The `ResponseCode`, e.g. `ErrorInvalidWatermark`.
        code: String,
        /// The server's `MessageText`.
        message: String,
    },
    /// A SOAP fault: the request could not be served at all (schema validation, a gateway
    /// error).
    #[error("soap fault {code}: {message}")]
    Fault {
        /// The EWS response code of the fault (from its detail, else its `faultcode`).
        code: String,
        /// The `faultstring`.
        message: String,
        /// The `X-Seg-Fault` header when the gateway itself made the fault (e.g.
        /// `upstream-unreachable`), `None` when it came from Exchange.
        gateway: Option<String>,
    },
    /// An HTTP error status without a SOAP fault.
    #[error("http status {status}")]
    Http {
        /// The status.
        status: StatusCode,
    },
    /// The request could not be sent or the response not read (connection refused, reset,
    /// cut mid-stream).
    #[error("transport error")]
    Transport(#[source] BoxError),
    /// The response is not the EWS document expected (not XML, missing elements, too large).
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A `GetStreamingEvents` response ended without `ConnectionStatus` `Closed`.
    #[error("the notification stream ended without being closed by the server")]
    StreamEnded,
    /// A request could not be built (an invalid URL or header value).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl EwsError {
    /// The error for an EWS `ResponseCode` other than `NoError`, with its `MessageText` and
    /// `BackOffMilliseconds`.
    pub fn from_response_code(code: &str, message: &str, back_off: Option<Duration>) -> Self {
        let message = message.to_string();
        match code {
            "ErrorSubscriptionNotFound" => EwsError::SubscriptionNotFound,
            "ErrorExpiredSubscription" => EwsError::ExpiredSubscription,
            "ErrorServerBusy" => EwsError::ServerBusy {
                back_off: back_off.unwrap_or_default(),
            },
            "ErrorAccessDenied" | "ErrorSubscriptionAccessDenied" => EwsError::AccessDenied {
                code: code.to_string(),
                message,
            },
            "ErrorInvalidSubscription" | "ErrorInvalidPullSubscriptionId" => {
                EwsError::InvalidSubscription {
                    code: code.to_string(),
                    message,
                }
            }
            _ => EwsError::Ews {
                code: code.to_string(),
                message,
            },
        }
    }

    /// The EWS response code this error carries, if it came from Exchange's answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            EwsError::SubscriptionNotFound => Some("ErrorSubscriptionNotFound"),
            EwsError::ExpiredSubscription => Some("ErrorExpiredSubscription"),
            EwsError::ServerBusy { .. } => Some("ErrorServerBusy"),
            EwsError::AccessDenied { code, .. }
            | EwsError::InvalidSubscription { code, .. }
            | EwsError::Ews { code, .. }
            | EwsError::Fault { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the gateway blocked the device (a compliance decision, not a failure).
    pub fn is_blocked(&self) -> bool {
        matches!(self, EwsError::Blocked { .. })
    }

    /// Whether the subscription is gone on the server, so that only a new `Subscribe` helps.
    pub fn is_subscription_lost(&self) -> bool {
        matches!(
            self,
            EwsError::SubscriptionNotFound
                | EwsError::ExpiredSubscription
                | EwsError::InvalidSubscription { .. }
        )
    }

    /// How long the server asked us to wait before retrying, if it did.
    pub fn back_off(&self) -> Option<Duration> {
        match self {
            EwsError::ServerBusy { back_off } => Some(*back_off),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_codes_map_to_variants() {
        assert!(matches!(
            EwsError::from_response_code("ErrorSubscriptionNotFound", "", None),
            EwsError::SubscriptionNotFound
        ));
        assert!(matches!(
            EwsError::from_response_code("ErrorExpiredSubscription", "", None),
            EwsError::ExpiredSubscription
        ));
        assert!(
            EwsError::from_response_code("ErrorInvalidPullSubscriptionId", "", None)
                .is_subscription_lost()
        );
        let other = EwsError::from_response_code("ErrorInvalidWatermark", "bad", None);
        assert_eq!(other.code(), Some("ErrorInvalidWatermark"));
        assert_eq!(
            other.to_string(),
            "exchange answered ErrorInvalidWatermark: bad"
        );
    }

    #[test]
    fn a_block_is_told_apart() {
        let blocked = EwsError::Blocked {
            reason: "device-wiped".into(),
        };
        assert!(blocked.is_blocked());
        assert_eq!(
            blocked.to_string(),
            "the gateway blocked the device (device-wiped)"
        );
        assert!(!EwsError::Unauthorized.is_blocked());
    }
}
