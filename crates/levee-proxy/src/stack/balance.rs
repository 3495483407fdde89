//! One try: ask the backend's [`NodeSet`](crate::nodes::NodeSet) which node
//! may take it (breaker-aware selection), call that node, and feed the
//! outcome back to the node set (breaker, load estimate, counters).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use levee_resilience::Deadline;
use levee_telemetry::ErrorReason;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::node::{NodeRequest, NotReplied, Replied};
use crate::body::RequestBody;
use crate::clock;
use crate::error::ProxyError;
use crate::headers::Forwarded;
use crate::nodes::{InFlightGuard, Node, Outcome, Pick};
use crate::pool::NodeBody;
use crate::upstream::Backend;

/// Most tries one request may make, whatever the config says.
pub const MAX_TRIES: usize = 8;

/// Nodes a request has already tried, by index.
#[derive(Debug, Clone, Copy)]
pub struct Tried {
    nodes: [usize; MAX_TRIES],
    len: usize,
}

impl Default for Tried {
    fn default() -> Self {
        Self {
            nodes: [usize::MAX; MAX_TRIES],
            len: 0,
        }
    }
}

impl Tried {
    pub fn as_slice(&self) -> &[usize] {
        &self.nodes[..self.len]
    }

    pub fn push(&mut self, index: usize) {
        if let Some(slot) = self.nodes.get_mut(self.len) {
            *slot = index;
            self.len += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One try of a request.
#[derive(Debug)]
pub struct Attempt {
    pub backend: Arc<Backend>,
    pub class: usize,
    /// Nodes not to pick again.
    pub tried: Tried,
    /// Whether a half-open trial call may be made (never on a retry).
    pub allow_probe: bool,
    pub ignore_state: bool,
    pub deadline: Deadline,
    /// Its URI holds the path and query; the node's authority is set here.
    pub request: Request<RequestBody>,
    /// Its `X-Forwarded-*` lines when they are not in its headers.
    pub forwarded: Option<Forwarded>,
    /// Ask the node client for the request head back, for a retry.
    pub head_back: bool,
}

/// A node answered (any status).
#[derive(Debug)]
pub struct Answer {
    pub response: Response<NodeBody>,
    /// The status counts as a failure for the node's breaker.
    pub failed: bool,
    pub index: usize,
    pub node: Arc<Node>,
    /// Held until the response body ends.
    pub in_flight: InFlightGuard,
    /// From sending the request to the response headers.
    pub elapsed: Duration,
    /// The request head, when the node client gave it back.
    pub head: Option<Box<Parts>>,
}

/// A try that got no answer.
#[derive(Debug)]
pub enum TryFailed {
    /// No node may take the request now; the request, unsent, when the
    /// pick found none (it may go on to a failover backend).
    NoNode(Option<Box<Request<RequestBody>>>),
    /// The call to node `index` failed; the request head, when the node
    /// client gave it back.
    Call {
        error: ProxyError,
        index: usize,
        head: Option<Box<Parts>>,
    },
}

/// Adds [`Balance`].
#[derive(Debug, Clone, Copy)]
pub struct BalanceLayer;

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance { inner }
    }
}

/// Picks a node for each try and reports the outcome to the node set.
#[derive(Debug, Clone)]
pub struct Balance<S> {
    inner: S,
}

impl<S> Service<Attempt> for Balance<S>
where
    S: Service<NodeRequest, Response = Replied, Error = NotReplied>,
{
    type Response = Answer;
    type Error = TryFailed;
    type Future = BalanceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TryFailed>> {
        self.inner.poll_ready(cx).map_err(|e| TryFailed::Call {
            error: e.error,
            index: usize::MAX,
            head: None,
        })
    }

    fn call(&mut self, mut attempt: Attempt) -> Self::Future {
        // The request is aimed where it is and moved once, into the node's
        // request: a few hundred bytes.
        let Some(pick) = attempt.backend.nodes.pick(
            attempt.class,
            attempt.tried.as_slice(),
            attempt.allow_probe,
            attempt.ignore_state,
        ) else {
            return BalanceFuture::Done {
                refused: Some(Refused::NoNode(Box::new(attempt.request))),
            };
        };
        let index = pick.index;
        if let Err(error) = aim(attempt.request.uri_mut(), &pick.node) {
            return BalanceFuture::Done {
                refused: Some(Refused::Target(error, index)),
            };
        }
        let in_flight = pick.node.enter();
        let fut = self.inner.call(NodeRequest {
            node: Arc::clone(&pick.node),
            request: attempt.request,
            forwarded: attempt.forwarded,
            deadline: attempt.deadline,
            head_back: attempt.head_back,
        });
        BalanceFuture::Calling {
            fut,
            call: Some(Call {
                backend: attempt.backend,
                pick,
                in_flight,
                sent: clock::now(),
            }),
        }
    }
}

/// What a call in progress holds until its outcome is recorded.
#[derive(Debug)]
pub struct Call {
    backend: Arc<Backend>,
    /// Dropped without an outcome (the client left), it gives a half-open
    /// trial slot back.
    pick: Pick,
    in_flight: InFlightGuard,
    sent: Instant,
}

pin_project_lite::pin_project! {
    /// The node call, then the outcome recorded.
    #[project = BalanceProj]
    pub enum BalanceFuture<F> {
        Calling { #[pin] fut: F, call: Option<Call> },
        Done { refused: Option<Refused> },
    }
}

/// A try refused before any call, kept small: no node to pick (the request
/// comes back unsent), or a target node `index` cannot take (never retried).
#[derive(Debug)]
pub enum Refused {
    NoNode(Box<Request<RequestBody>>),
    Target(ProxyError, usize),
}

impl<F> Future for BalanceFuture<F>
where
    F: Future<Output = Result<Replied, NotReplied>>,
{
    type Output = Result<Answer, TryFailed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BalanceProj::Done { refused } => Poll::Ready(Err(match refused.take() {
                Some(Refused::NoNode(request)) => TryFailed::NoNode(Some(request)),
                Some(Refused::Target(error, index)) => TryFailed::Call {
                    error,
                    index,
                    head: None,
                },
                None => TryFailed::NoNode(None),
            })),
            BalanceProj::Calling { fut, call } => {
                let result = ready!(fut.poll(cx));
                let Some(Call {
                    backend,
                    mut pick,
                    in_flight,
                    sent,
                }) = call.take()
                else {
                    return Poll::Ready(Err(TryFailed::NoNode(None)));
                };
                // One clock read for the call's time and every record of it.
                let now = clock::now();
                let elapsed = now.saturating_duration_since(sent);
                let index = pick.index;
                Poll::Ready(match result {
                    Ok(Replied { response, head }) => {
                        let status = response.status().as_u16();
                        let failed =
                            backend
                                .nodes
                                .record(&mut pick, now, elapsed, Outcome::Status(status));
                        backend.record(now, elapsed, failed);
                        Ok(Answer {
                            response,
                            failed,
                            index,
                            node: Arc::clone(&pick.node),
                            in_flight,
                            elapsed,
                            head,
                        })
                    }
                    Err(NotReplied { error, head }) => {
                        if error.reason.blames_node() {
                            backend.nodes.record(
                                &mut pick,
                                now,
                                elapsed,
                                Outcome::Failed(error.reason),
                            );
                            backend.record(now, elapsed, true);
                        }
                        Err(TryFailed::Call { error, index, head })
                    }
                })
            }
        }
    }
}

/// Sets the request's target as `node` takes it: HTTP/1 in origin form
/// (`/path?query`, left as it is when the client sent it so), HTTP/2
/// absolute with the node's authority, which hyper sends as `:scheme` and
/// `:authority`.
fn aim(uri: &mut Uri, node: &Node) -> Result<(), ProxyError> {
    if node.speaks_http2() {
        *uri = node_uri(uri, &node.authority)?;
    } else if uri.scheme().is_some() || uri.authority().is_some() {
        *uri = Uri::from(path_and_query(uri));
    }
    Ok(())
}

/// The request's path and query, aimed at the node.
fn node_uri(uri: &Uri, authority: &Authority) -> Result<Uri, ProxyError> {
    Uri::builder()
        .scheme("http")
        .authority(authority.clone())
        .path_and_query(path_and_query(uri))
        .build()
        .map_err(|e| ProxyError::new(ErrorReason::BadRequest, format!("bad request target: {e}")))
}

fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}
