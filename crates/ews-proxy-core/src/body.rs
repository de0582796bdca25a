//! The body types the gateway's services exchange.

use crate::host_pool::PoolLease;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The error type of bodies and services whose errors are passed on, not matched.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body the upstream client sends: whatever the client sent, type-erased once so that
/// one pooled client serves every stack a user composes.
pub type UpstreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pin_project! {
    /// The response body of the gateway: Exchange's body streamed through, or a body the gateway
    /// made itself (a SOAP fault, a health answer).
    ///
    /// An enum rather than a boxed body, so the streamed case costs no allocation per response.
    #[project = ResponseBodyProj]
    #[allow(missing_docs)] // pin-project-lite takes no docs on variant fields; the variants say it
    pub enum ResponseBody {
        /// Exchange's response body, streamed frame by frame; its pooled connection (if it came
        /// through a [`crate::host_pool::HostPool`]) is given back when the body ends.
        Upstream {
            #[pin] body: hyper::body::Incoming,
            lease: Option<PoolLease>,
        },
        /// A complete body made by the gateway.
        Full {
            #[pin] body: Full<Bytes>,
        },
    }
}

impl ResponseBody {
    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full {
            body: Full::new(Bytes::new()),
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseBody::Upstream { body, lease } => f
                .debug_struct("Upstream")
                .field("body", body)
                .field("lease", lease)
                .finish(),
            ResponseBody::Full { body } => f.debug_struct("Full").field("body", body).finish(),
        }
    }
}

impl Default for ResponseBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody::Full {
            body: Full::new(bytes),
        }
    }
}

impl From<String> for ResponseBody {
    fn from(text: String) -> Self {
        Bytes::from(text).into()
    }
}

impl From<&'static str> for ResponseBody {
    fn from(text: &'static str) -> Self {
        Bytes::from_static(text.as_bytes()).into()
    }
}

impl ResponseBody {
    /// Exchange's `body`, holding `lease` on its connection until the body ends (at once when
    /// there is no body).
    pub(crate) fn leased(body: hyper::body::Incoming, lease: PoolLease) -> Self {
        if body.is_end_stream() {
            lease.release();
            return ResponseBody::Upstream { body, lease: None };
        }
        ResponseBody::Upstream {
            body,
            lease: Some(lease),
        }
    }
}

impl From<hyper::body::Incoming> for ResponseBody {
    fn from(body: hyper::body::Incoming) -> Self {
        ResponseBody::Upstream { body, lease: None }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ResponseBodyProj::Upstream { mut body, lease } => {
                let frame = body.as_mut().poll_frame(cx);
                match &frame {
                    // The last frame: the connection can serve the next request while the
                    // client is still being sent this one.
                    Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(lease) = lease.take() {
                            lease.release();
                        }
                    }
                    // A broken body: its connection is not reused (dropping the lease closes it).
                    Poll::Ready(Some(Err(_))) => drop(lease.take()),
                    _ => {}
                }
                frame.map_err(|e| e.into())
            }
            ResponseBodyProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body, .. } => body.is_end_stream(),
            ResponseBody::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body, .. } => body.size_hint(),
            ResponseBody::Full { body } => body.size_hint(),
        }
    }
}
