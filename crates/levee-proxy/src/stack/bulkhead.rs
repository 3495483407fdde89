//! Bulkheads on the request path: the route's (if it has one), then the
//! chosen backend's. A free slot is taken at once; otherwise the request
//! waits in the bulkhead's bounded queue until that bulkhead's
//! `queue_timeout` (or the deadline, if sooner), then gets 503
//! `bulkhead-full`. Waiters are admitted by their route's priority
//! (critical, then normal, then sheddable; in order of arrival within one).
//! The permit travels with the request and is released when its response
//! body ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use levee_config::Priority;
use levee_resilience::{BulkheadFull, BulkheadPermit, Precedence};
use levee_telemetry::ErrorReason;
use tower::{Layer, Service};

use http::Response;

use super::{ProxyResult, Routed};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Which bulkhead a [`Bulkhead`] layer takes a slot of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Route,
    Backend,
}

/// Adds [`Bulkhead`].
#[derive(Debug, Clone, Copy)]
pub struct BulkheadLayer {
    scope: Scope,
}

impl BulkheadLayer {
    pub fn route() -> Self {
        Self {
            scope: Scope::Route,
        }
    }

    pub fn backend() -> Self {
        Self {
            scope: Scope::Backend,
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Bulkhead<S> {
        Bulkhead {
            inner,
            scope: self.scope,
        }
    }
}

/// Takes a slot of the route's or the backend's bulkhead.
#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    scope: Scope,
}

type Queued = Pin<Box<dyn Future<Output = ProxyResult> + Send>>;

impl<S> Service<Routed> for Bulkhead<S>
where
    S: Service<Routed, Response = Response<ProxyBody>, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = ProxyError;
    type Future = BulkheadFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Routed) -> Self::Future {
        let scope = self.scope;
        let taken = match bulkhead_of(&req, scope) {
            None => Ok(None),
            Some(b) => b.try_acquire().map(Some),
        };
        match taken {
            // No bulkhead here, or a free slot: the fast path.
            Ok(None) => {
                return BulkheadFuture::Inner {
                    fut: self.inner.call(req),
                }
            }
            Ok(Some(Some(permit))) => {
                set_slot(&mut req, scope, permit);
                return BulkheadFuture::Inner {
                    fut: self.inner.call(req),
                };
            }
            Err(e) => {
                return BulkheadFuture::Refused {
                    error: Some(full(&req, scope, e)),
                }
            }
            Ok(Some(None)) => {}
        }
        // The slow path: wait in the queue. Levee's layers are always
        // ready, so a clone of the inner service may be called directly.
        let mut inner = self.inner.clone();
        let queue_timeout = match scope {
            Scope::Route => req.route().queue_timeout,
            Scope::Backend => req.backend().queue_timeout,
        };
        let wait_until = req.deadline.capped(queue_timeout);
        let precedence = precedence(req.route().priority);
        let queued = async move {
            let state = Arc::clone(&req.state);
            let permit = match scope {
                Scope::Route => match &state.routes[req.route].bulkhead {
                    Some(b) => b.acquire(precedence, wait_until).await,
                    None => return inner.call(req).await,
                },
                Scope::Backend => {
                    state.backends[req.backend]
                        .bulkhead()
                        .acquire(precedence, wait_until)
                        .await
                }
            };
            match permit {
                Ok(permit) => {
                    set_slot(&mut req, scope, permit);
                    req.queued = true;
                    inner.call(req).await
                }
                Err(e) => Err(full(&req, scope, e)),
            }
        };
        BulkheadFuture::Queued {
            fut: Box::pin(queued),
        }
    }
}

/// The bulkhead to take a slot of: `None` when the route has none, or when
/// the request already holds its backend slot (taken with its share, by
/// [`super::backend`]).
fn bulkhead_of(req: &Routed, scope: Scope) -> Option<&levee_resilience::Bulkhead> {
    match scope {
        Scope::Route => req.route().bulkhead.as_deref(),
        Scope::Backend if req.backend_slot.is_some() => None,
        Scope::Backend => Some(req.backend().bulkhead()),
    }
}

/// The line of the queue a request of `priority` waits in.
pub(super) fn precedence(priority: Priority) -> Precedence {
    match priority {
        Priority::Critical => Precedence::Critical,
        Priority::Normal => Precedence::Normal,
        Priority::Sheddable => Precedence::Sheddable,
    }
}

fn set_slot(req: &mut Routed, scope: Scope, permit: BulkheadPermit) {
    match scope {
        Scope::Route => req.route_slot = Some(permit),
        Scope::Backend => req.backend_slot = Some(permit),
    }
}

fn full(req: &Routed, scope: Scope, e: BulkheadFull) -> ProxyError {
    let (kind, name) = match scope {
        Scope::Route => ("route", req.route().name.as_str()),
        Scope::Backend => ("backend", req.backend().name.as_str()),
    };
    ProxyError::new(ErrorReason::BulkheadFull, format!("{kind} {name}: {e}"))
}

pin_project_lite::pin_project! {
    /// The inner call; a refusal; or (only when the request must queue) the
    /// wait and then the inner call, boxed.
    #[project = BulkheadProj]
    pub enum BulkheadFuture<F> {
        Inner { #[pin] fut: F },
        Queued { fut: Queued },
        Refused { error: Option<ProxyError> },
    }
}

impl<F> Future for BulkheadFuture<F>
where
    F: Future<Output = ProxyResult>,
{
    type Output = ProxyResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ProxyResult> {
        match self.project() {
            BulkheadProj::Inner { fut } => fut.poll(cx),
            BulkheadProj::Queued { fut } => fut.as_mut().poll(cx),
            BulkheadProj::Refused { error } => Poll::Ready(Err(super::taken(error))),
        }
    }
}
