//! The body types the gateway's services exchange.

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
        /// Exchange's response body, streamed frame by frame.
        Upstream {
            #[pin] body: hyper::body::Incoming,
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

impl From<hyper::body::Incoming> for ResponseBody {
    fn from(body: hyper::body::Incoming) -> Self {
        ResponseBody::Upstream { body }
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
            ResponseBodyProj::Upstream { body } => body.poll_frame(cx).map_err(|e| e.into()),
            ResponseBodyProj::Full { body } => body.poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { body } => body.is_end_stream(),
            ResponseBody::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { body } => body.size_hint(),
            ResponseBody::Full { body } => body.size_hint(),
        }
    }
}
