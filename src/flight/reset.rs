//! Telling a client's reset from the end of its stream.
//!
//! tonic turns a request body that fails with `Cancelled` (the client sent
//! `RST_STREAM(CANCEL)`: it cancelled the call, dropped it, or its deadline
//! passed on its side) into a *clean end* of the `Streaming` (`Ok(None)`,
//! `tonic::codec::decode`, "Direction::Request"). To the put that looks like
//! a message that ended normally, and the rows received so far would be
//! committed under the message's sequence number. The handler future is
//! dropped too, but only later, so a drop guard alone races with the read.
//!
//! [`WatchResets`] wraps the service so that each request body is watched:
//! a body that ends in an error (any error: a reset, a broken connection)
//! cancels the request's [`BodyReset`] token *before* tonic sees the error,
//! so by the time the put reads "end of stream", the token already says
//! whether it was one. The put commits only if the token is not cancelled.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, Service};
use tonic::server::NamedService;

/// In a request's extensions: cancelled when its body ended in an error.
#[derive(Debug, Clone)]
pub struct BodyReset(pub CancellationToken);

/// A tonic service whose request bodies are watched for resets.
#[derive(Debug, Clone)]
pub struct WatchResets<S>(pub S);

impl<S: NamedService> NamedService for WatchResets<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<tonic::body::Body>> for WatchResets<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let reset = CancellationToken::new();
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(BodyReset(reset.clone()));
        let body = tonic::body::Body::new(Watched { inner: body, reset });
        self.0.call(http::Request::from_parts(parts, body))
    }
}

/// A request body that cancels `reset` when it yields an error.
struct Watched {
    inner: tonic::body::Body,
    reset: CancellationToken,
}

impl http_body::Body for Watched {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.reset.cancel();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
