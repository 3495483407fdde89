//! A connection's stack as hyper's service, called in place.
//!
//! hyper calls its service through a shared reference, so hyper-util's
//! `TowerToHyperService` clones the whole tower stack for every request: the
//! clone writes the reference counts of the `Arc`s in it, one of them shared
//! by every worker (a cache line that moves between cores per request), and
//! moves the stack and the request into the response future. levee's layers
//! keep nothing per request in the service and are always ready (a wait is
//! in a response future, never in `poll_ready`), so the connection's one
//! stack is called where it is.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tower::Service;

/// Tower service `S` as hyper's service, without a clone per request.
#[derive(Debug)]
pub struct Serve<S> {
    stack: RefCell<S>,
}

impl<S> Serve<S> {
    pub fn new(stack: S) -> Self {
        Self {
            stack: RefCell::new(stack),
        }
    }
}

/// The stack was not ready at once (no levee layer ever waits there), or
/// hyper called it from within a call: hyper ends the connection.
#[derive(Debug, thiserror::Error)]
#[error("the connection's service was not ready")]
pub struct NotReady;

impl<S, R> hyper::service::Service<R> for Serve<S>
where
    S: Service<R, Error = Infallible>,
{
    type Response = S::Response;
    type Error = NotReady;
    type Future = Served<S::Future>;

    fn call(&self, req: R) -> Served<S::Future> {
        let Ok(mut stack) = self.stack.try_borrow_mut() else {
            return Served::NotReady;
        };
        match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Served::Called {
                fut: stack.call(req),
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Served::NotReady,
        }
    }
}

pin_project_lite::pin_project! {
    /// The stack's response future, or the refusal of a stack not ready.
    #[project = ServedProj]
    pub enum Served<F> {
        Called { #[pin] fut: F },
        NotReady,
    }
}

impl<F, T> Future for Served<F>
where
    F: Future<Output = Result<T, Infallible>>,
{
    type Output = Result<T, NotReady>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ServedProj::Called { fut } => fut.poll(cx).map(|r| r.map_err(|never| match never {})),
            ServedProj::NotReady => Poll::Ready(Err(NotReady)),
        }
    }
}
