//! The response future of a middleware that either calls its inner service or answers by
//! itself (a refusal, a fault), without boxing either case.

use http::Response;
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project! {
    /// The inner service's future, or a response made without calling it.
    pub struct ShortCircuit<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Called { #[pin] inner: F },
        Answered { response: Option<Response<B>> },
    }
}

impl<F, B> ShortCircuit<F, B> {
    /// Waits for the inner service's response.
    pub fn called(inner: F) -> Self {
        ShortCircuit {
            kind: Kind::Called { inner },
        }
    }

    /// Answers `response` without calling the inner service.
    pub fn answered(response: Response<B>) -> Self {
        ShortCircuit {
            kind: Kind::Answered {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ShortCircuit<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner } => inner.poll(cx),
            KindProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("ShortCircuit polled after completion"))),
        }
    }
}
