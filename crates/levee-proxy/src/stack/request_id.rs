//! `x-request-id`: the client's, when it is usable, else a new one; the
//! node gets it, and so does every response, the node's and levee's own
//! (the response's body carries it to the head's writer, which writes it in
//! place of any the node sent).
//!
//! Not tower-http's `SetRequestId` + `PropagateRequestId`: they keep any
//! client value (so an extra layer would have to drop unusable ones), let a
//! node's own `x-request-id` replace the one it was sent, and put the id in
//! the request's and the response's extensions (two map allocations per
//! request). This is one layer with one or two header operations.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::{Entry, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::ProxyBody;
use crate::headers::{self, X_REQUEST_ID};

/// Adds [`RequestId`].
#[derive(Debug, Clone, Copy)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

/// Keeps or makes the request's id and stamps it on the response.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>>,
{
    type Response = Response<ProxyBody>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // One lookup, whether the id is kept, replaced or added.
        let id = match req.headers_mut().entry(X_REQUEST_ID) {
            Entry::Occupied(e) if headers::usable_request_id(e.get()) => e.get().clone(),
            Entry::Occupied(mut e) => {
                let id = headers::new_request_id();
                e.insert(id.clone());
                id
            }
            Entry::Vacant(e) => {
                let id = headers::new_request_id();
                e.insert(id.clone());
                id
            }
        };
        RequestIdFuture {
            fut: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project_lite::pin_project! {
    /// Gives the id to the response's body, for the head's writer.
    pub struct RequestIdFuture<F> {
        #[pin]
        fut: F,
        id: Option<HeaderValue>,
    }
}

impl<F, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = Result<Response<ProxyBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Given where it is: a response moved out and back is a copy of a
        // few hundred bytes each way. A poll with no answer yet is not
        // moved at all (it is as large as one).
        let mut poll = this.fut.poll(cx);
        if poll.is_pending() {
            return Poll::Pending;
        }
        if let Poll::Ready(Ok(resp)) = &mut poll {
            if let Some(id) = this.id.take() {
                resp.body_mut().carry_request_id(id);
            }
        }
        poll
    }
}

/// Puts the id the body carries into the head, replacing the node's own,
/// and a node's HTTP/1 field lines into the map before it: for a writer of
/// heads that is not levee's (hyper's HTTP/2 server). levee's HTTP/1
/// server writes both itself, with no map.
pub fn stamp(mut resp: Response<ProxyBody>) -> Response<ProxyBody> {
    // A node's HTTP/1 field lines, kept out of the map for levee's writer.
    if let Some(fields) = resp.body_mut().take_fields() {
        fields.prepend_end_to_end(resp.headers_mut());
    }
    if let Some(id) = resp.body_mut().take_request_id() {
        resp.headers_mut().insert(X_REQUEST_ID, id);
    }
    resp
}
