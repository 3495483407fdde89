//! Retries: only where it is safe, always on another node, within the
//! deadline and the backend's retry budget.
//!
//! Any method is retried when the request never reached a node (connect
//! failed); idempotent methods also after a reset, a bad response, or a
//! status in `on_statuses`. A request body up to `buffer_bytes` is read
//! whole first so it can be sent again (a chunked one always, so its
//! framing is checked before a node sees it); a larger one streams once
//! and is never retried. An answer is never given up unless another node can be
//! asked. The final answer carries the request's slots and gauges in its
//! body, which releases them when it ends.
//!
//! A request whose backend has no node left for it by the time one is
//! picked (another request took the last half-open trial slot, say), or
//! whose failed call a retry may follow but only to a backend now all down
//! (a failed trial call re-opened the last breaker), goes on to the
//! failover backend as [`super::backend::ChooseBackend`] would have sent it
//! (`when_all_down = "failover"`, within the failover budget), once: the
//! backend's slot is given back and one of the failover's taken, waiting by
//! priority within its `queue_timeout` as in the bulkhead layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body::Body as _;
use levee_config::WhenAllDown;
use levee_resilience::{BulkheadFull, BulkheadPermit, Deadline, Phase};
use levee_telemetry::{BackendEvent, ErrorReason};
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::backend::fail_over_to;
use super::balance::{Answer, Attempt, Tried, TryFailed, MAX_TRIES};
use super::bulkhead::precedence;
use super::{ProxyResult, Routed};
use crate::access_log::UpstreamInfo;
use crate::body::{
    ClientBody, ClientBodyFailure, ProxyBody, RequestBody, RequestScope, UpstreamBody,
};
use crate::error::ProxyError;
use crate::headers;
use crate::nodes::NodeHot;
use crate::upstream::Backend;

/// Adds [`Retry`].
#[derive(Debug, Clone, Copy)]
pub struct RetryLayer;

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry { inner }
    }
}

/// Runs a request's tries until one answers or retrying is not safe.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
}

impl<S> Service<Routed> for Retry<S>
where
    S: Service<Attempt, Response = Answer, Error = TryFailed> + Clone,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = RetryFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner
            .poll_ready(cx)
            .map_err(|_| ProxyError::new(ErrorReason::NoHealthyNode, "no node is ready"))
    }

    fn call(&mut self, mut req: Routed) -> RetryFuture<S> {
        let failed_over = req.backend != req.route().backend_index;
        let backend = Arc::clone(&req.state.backends[req.backend]);
        // A request that waited in no queue is counted at its start: the
        // clock has not moved since but for levee's own microseconds.
        if req.queued {
            backend.retry_budget.record_request();
        } else {
            backend.retry_budget.record_request_at(req.deadline.start());
        }
        let body = std::mem::replace(&mut req.body, ClientBody::Empty);
        let mut run = Box::pin(Run {
            inner: self.inner.clone(),
            tries: Tries {
                body_limit: req.route().max_request_body_bytes,
                client_body: None,
                idempotent: is_idempotent(&req.parts.method),
                req,
                has_head: true,
                body: Outgoing::Stream(None),
                tried: Tried::default(),
                max: 1,
                last_error: None,
                backend,
                attempts: 0,
                failed_over,
            },
            step: Step::Idle,
        });
        let mut run_ = run.as_mut().project();
        let step = first_step(run_.tries, run_.inner, body);
        run_.step.set(step);
        RetryFuture { run }
    }
}

/// Everything a request keeps across its tries.
struct Tries {
    /// The request as the layers above passed it down: its head (method,
    /// target, headers) is what a try is built from; its body has moved to
    /// `body`; its backend index is the one it came down with (`backend`
    /// is the one it runs on).
    req: Routed,
    /// `req` holds the head: not while a try that took it runs, nor after
    /// one that did not give it back.
    has_head: bool,
    body: Outgoing,
    idempotent: bool,
    tried: Tried,
    /// Tries allowed: 1, or 1 + retries when the body can be sent again.
    max: usize,
    last_error: Option<ProxyError>,
    backend: Arc<Backend>,
    /// The route's request body limit.
    body_limit: Option<u64>,
    /// Set when the streamed body fails on the client's side.
    client_body: Option<ClientBodyFailure>,
    /// Tries started so far.
    attempts: u8,
    /// The request runs on the route's failover backend already.
    failed_over: bool,
}

/// The request body as levee sends it: kept whole when small enough to be
/// sent again, else streamed once.
enum Outgoing {
    Kept(Bytes),
    Stream(Option<RequestBody>),
}

type Reading = Pin<Box<dyn Future<Output = Result<RequestBody, ProxyError>> + Send>>;
type Waiting = Pin<Box<dyn Future<Output = Result<BulkheadPermit, BulkheadFull>> + Send>>;

pin_project_lite::pin_project! {
    #[project = StepProj]
    enum Step<F> {
        Idle,
        /// Reading a small body whole before the first try (boxed: rare).
        Reading { read: Reading },
        Calling { #[pin] fut: F },
        /// Waiting out a retry's backoff (boxed: rare).
        Backoff { sleep: Pin<Box<Sleep>> },
        /// Waiting for a slot of the failover backend (boxed: rare), then
        /// sending `request` if the last try handed it back unsent.
        Queued { wait: Waiting, request: Option<Box<Request<RequestBody>>> },
    }
}

/// A request's tries, from its first to its answer or final error.
pub struct RetryFuture<S>
where
    S: Service<Attempt>,
{
    /// Boxed once: every layer above wraps this future in its own and
    /// moves it, and a request's tries hold its head, its body and a try
    /// in progress.
    run: Pin<Box<Run<S>>>,
}

pin_project_lite::pin_project! {
    struct Run<S>
    where
        S: Service<Attempt>,
    {
        inner: S,
        tries: Tries,
        #[pin]
        step: Step<S::Future>,
    }
}

/// Decides how the body goes out, then starts the first try (or the read
/// of a body kept whole first). A body up to `buffer_bytes` is read whole
/// first when it declares its length and may be retried, and always when
/// it is chunked: then its framing is checked whole ([`crate::gate`])
/// before any of it reaches a node. A larger chunked body streams on after
/// the bytes read so far.
fn first_step<S>(t: &mut Tries, inner: &mut S, body: ClientBody) -> Step<S::Future>
where
    S: Service<Attempt>,
{
    let retry = &t.backend.retry;
    if body.is_end_stream() {
        t.body = Outgoing::Kept(Bytes::new());
        return next_try(t, inner);
    }
    let declared = body.size_hint().exact().filter(|_| {
        t.req
            .parts
            .headers
            .contains_key(http::header::CONTENT_LENGTH)
    });
    let read_first = match declared {
        Some(len) => len <= retry.buffer_bytes as u64 && retry.max_retries > 0,
        None => retry.buffer_bytes > 0,
    };
    let body = RequestBody::stream(body, t.backend.body_idle_timeout, t.body_limit);
    if !read_first {
        t.body = Outgoing::Stream(Some(body));
        return next_try(t, inner);
    }
    let deadline = t.req.deadline;
    let max = retry.buffer_bytes;
    Step::Reading {
        read: Box::pin(async move {
            match deadline.run(Phase::BodyIdle, body.read_up_to(max)).await {
                Ok(Ok(body)) => Ok(body),
                Ok(Err(e)) => Err(ProxyError::client_body(&e)),
                Err(_) => Err(ProxyError::new(
                    ErrorReason::ClientBody,
                    "the client did not send its request body before the deadline",
                )),
            }
        }),
    }
}

/// Starts the next try on a node not tried yet.
fn next_try<S>(t: &mut Tries, inner: &mut S) -> Step<S::Future>
where
    S: Service<Attempt>,
{
    if t.tried.is_empty() {
        t.max = tries_allowed(t);
    }
    let body = match &mut t.body {
        Outgoing::Kept(data) => RequestBody::kept(data.clone()),
        Outgoing::Stream(body) => match body.take() {
            Some(b) => {
                // Only a streamed body can fail after the response started.
                let flag = ClientBodyFailure::default();
                t.client_body = Some(Arc::clone(&flag));
                b.watched(flag)
            }
            None => RequestBody::kept(Bytes::new()),
        },
    };
    // The try takes the head (method, target, headers) whole, and leaves
    // one new empty head, not a new request's as well, made and dropped;
    // see `call_with`. The extensions stay with the request: a try's are
    // empty, as a new request's.
    let mut head = std::mem::replace(&mut t.req.parts, Request::new(()).into_parts().0);
    std::mem::swap(&mut head.extensions, &mut t.req.parts.extensions);
    head.version = Version::HTTP_11;
    t.has_head = false;
    call_with(t, inner, Request::from_parts(head, body))
}

/// Whether the next try is the last: the last allowed, or one after which
/// every node has been tried (a retry goes to another node) and the request
/// may not fail over to another backend.
fn is_last(t: &Tries) -> bool {
    let tried = t.tried.len() + 1;
    tried >= t.max || (tried >= t.backend.nodes.len() && !may_fail_over(t))
}

/// Whether `backend`'s nodes speak HTTP/2 (a backend's nodes share its
/// protocol).
fn speaks_http2(backend: &Backend) -> bool {
    backend
        .nodes
        .nodes()
        .first()
        .is_some_and(|n| n.speaks_http2())
}

/// Keeps the head a try gave back, for the next one.
fn head_back(t: &mut Tries, head: Option<Box<http::request::Parts>>) {
    if let Some(head) = head {
        t.req.parts = *head;
        t.has_head = true;
    }
}

/// Tries allowed on the request's backend: 1, or 1 + its retries when the
/// body can be sent again.
fn tries_allowed(t: &Tries) -> usize {
    if matches!(t.body, Outgoing::Kept(_)) {
        1 + (t.backend.retry.max_retries as usize).min(MAX_TRIES - 1)
    } else {
        1
    }
}

/// Starts a try of `request`.
fn call_with<S>(t: &mut Tries, inner: &mut S, request: Request<RequestBody>) -> Step<S::Future>
where
    S: Service<Attempt>,
{
    t.attempts = t.attempts.saturating_add(1);
    // A try that another may follow asks the HTTP/1 node client to give the
    // head back with the outcome. hyper's HTTP/2 client keeps it: the
    // request keeps a copy.
    let head_back = !is_last(t);
    if head_back && !t.has_head && speaks_http2(&t.backend) {
        t.req.parts.method = request.method().clone();
        t.req.parts.uri = request.uri().clone();
        t.req.parts.headers = request.headers().clone();
        t.has_head = true;
    }
    let attempt = Attempt {
        backend: Arc::clone(&t.backend),
        class: t.req.class,
        tried: t.tried,
        allow_probe: t.tried.is_empty(),
        ignore_state: t.req.ignore_state,
        deadline: t.req.deadline,
        request,
        // The last try takes them; one that another may follow lends a copy.
        forwarded: if head_back {
            t.req.forwarded.clone()
        } else {
            t.req.forwarded.take()
        },
        head_back,
    };
    Step::Calling {
        fut: inner.call(attempt),
    }
}

/// The answer goes to the client, carrying what the request holds.
fn finish(t: &mut Tries, answer: Answer) -> Response<ProxyBody> {
    let (mut parts, body) = answer.response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let scope = RequestScope {
        route_slot: t.req.route_slot.take(),
        backend_slot: t.req.backend_slot.take(),
        node_in_flight: answer.in_flight,
        route: Arc::clone(&t.req.route().stats),
        client_body: t.client_body.take(),
    };
    let end = t.req.deadline.end().zip(t.req.deadline.total_budget());
    let body = UpstreamBody::new(body, t.backend.body_idle_timeout, end, scope);
    let upstream = logged(t, &answer.node.stats, Some(answer.elapsed));
    Response::from_parts(parts, ProxyBody::upstream(body, upstream))
}

/// What the access log says of the node tried last, when the log is on.
fn logged(
    t: &Tries,
    node: &Arc<NodeHot>,
    headers_after: Option<Duration>,
) -> Option<Box<UpstreamInfo>> {
    t.req.state.access_log.as_ref()?;
    Some(Box::new(UpstreamInfo {
        node: Arc::clone(node),
        attempts: t.attempts,
        headers_after,
        kept_body: match &t.body {
            Outgoing::Kept(data) => Some(data.len() as u64),
            Outgoing::Stream(_) => None,
        },
    }))
}

/// The request's final error, with the node that failed it for the log.
fn failed(t: &Tries, mut error: ProxyError, index: usize) -> ProxyError {
    if let Some(node) = t.backend.nodes.nodes().get(index) {
        error.upstream = logged(t, &node.stats, None);
    }
    error
}

/// The backoff before a retry after a try on node `index`, if one may
/// follow: on another node, or, with none usable left, on the failover
/// backend.
fn retry_after<F>(t: &mut Tries, index: usize) -> Option<Step<F>> {
    t.tried.push(index);
    if t.tried.len() >= t.max || !t.has_head {
        return None;
    }
    let here = t
        .backend
        .nodes
        .has_alternative(t.req.class, t.tried.as_slice(), t.req.ignore_state);
    let failover = if here {
        None
    } else if t.backend.nodes.any_usable(t.req.class) {
        return None;
    } else {
        Some(failover_of(t)?)
    };
    let pause = retry_pause(&t.backend, &t.req.deadline, t.tried.len() - 1)?;
    let backoff = Step::Backoff {
        sleep: Box::pin(tokio::time::sleep(pause)),
    };
    let Some(fb) = failover else {
        return Some(backoff);
    };
    match switch_to(t, fb) {
        Ok(None) => Some(backoff),
        Ok(Some(wait)) => Some(Step::Queued {
            wait,
            request: None,
        }),
        Err(_) => None,
    }
}

/// The backend a request whose own backend has no node left for it may go
/// on to: its failover, if `when_all_down = "failover"`, the failover has a
/// usable node, and the request has not failed over already.
fn failover_of(t: &Tries) -> Option<Arc<Backend>> {
    if !may_fail_over(t) {
        return None;
    }
    let fb = t.req.state.backends.get(t.backend.failover?)?;
    fb.nodes.any_usable(t.req.class).then(|| Arc::clone(fb))
}

/// Whether the request may yet go on to a failover backend.
fn may_fail_over(t: &Tries) -> bool {
    !t.failed_over
        && t.backend.when_all_down == WhenAllDown::Failover
        && t.backend.failover.is_some()
}

/// Moves the request to failover backend `fb` if it fits `fb`'s failover
/// budget (else the shed error): gives this backend's slot back, takes one
/// of `fb`'s (with the budget's share, or for a critical request any free
/// one), or returns the wait for one (by priority, within `fb`'s
/// queue_timeout), and starts the request's tries afresh on `fb`.
fn switch_to(t: &mut Tries, fb: Arc<Backend>) -> Result<Option<Waiting>, ProxyError> {
    let priority = t.req.route().priority;
    let within_budget = fail_over_to(&t.backend, priority, &fb)?;
    t.req.backend_slot = None;
    let slot = match within_budget {
        Some(slot) => Some(slot),
        None => fb.bulkhead().try_acquire().map_err(|e| full(&fb, e))?,
    };
    fb.retry_budget.record_request();
    t.backend = Arc::clone(&fb);
    t.tried = Tried::default();
    t.req.ignore_state = false;
    t.failed_over = true;
    t.max = tries_allowed(t);
    if let Some(permit) = slot {
        t.req.backend_slot = Some(permit);
        return Ok(None);
    }
    let wait_until = t.req.deadline.capped(fb.queue_timeout);
    let precedence = precedence(priority);
    Ok(Some(Box::pin(async move {
        fb.bulkhead().acquire(precedence, wait_until).await
    })))
}

fn full(backend: &Backend, e: BulkheadFull) -> ProxyError {
    ProxyError::new(
        ErrorReason::BulkheadFull,
        format!("backend {}: {e}", backend.name),
    )
}

impl<S> Future for RetryFuture<S>
where
    S: Service<Attempt, Response = Answer, Error = TryFailed>,
{
    type Output = ProxyResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ProxyResult> {
        let mut this = self.get_mut().run.as_mut().project();
        loop {
            let next = match this.step.as_mut().project() {
                StepProj::Idle => return Poll::Ready(Err(no_node(this.tries))),
                StepProj::Reading { read } => match ready!(read.as_mut().poll(cx)) {
                    Ok(body) => {
                        this.tries.body = match body {
                            RequestBody::Kept(data) => Outgoing::Kept(data),
                            started => Outgoing::Stream(Some(started)),
                        };
                        next_try(this.tries, this.inner)
                    }
                    Err(e) => {
                        this.step.set(Step::Idle);
                        return Poll::Ready(Err(e));
                    }
                },
                StepProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    next_try(this.tries, this.inner)
                }
                StepProj::Queued { wait, request } => match ready!(wait.as_mut().poll(cx)) {
                    Ok(permit) => {
                        this.tries.req.backend_slot = Some(permit);
                        match request.take() {
                            Some(request) => call_with(this.tries, this.inner, *request),
                            None => next_try(this.tries, this.inner),
                        }
                    }
                    Err(e) => {
                        this.step.set(Step::Idle);
                        return Poll::Ready(Err(full(&this.tries.backend, e)));
                    }
                },
                StepProj::Calling { fut } => {
                    let result = ready!(fut.poll(cx));
                    this.step.set(Step::Idle);
                    let t = &mut *this.tries;
                    match result {
                        Ok(mut answer) => {
                            head_back(t, answer.head.take());
                            let status = answer.response.status().as_u16();
                            // Never give up an answer unless another node can be asked.
                            let worth =
                                t.idempotent && t.backend.retry.on_statuses.contains(&status);
                            match worth.then(|| retry_after(t, answer.index)).flatten() {
                                Some(backoff) => backoff,
                                None => return Poll::Ready(Ok(finish(t, answer))),
                            }
                        }
                        Err(TryFailed::NoNode(request)) => {
                            let e = t.last_error.take().unwrap_or_else(|| no_node(t));
                            // Unsent, it may still go to the failover backend.
                            let (Some(request), Some(fb)) = (request, failover_of(t)) else {
                                return Poll::Ready(Err(e));
                            };
                            match switch_to(t, fb) {
                                Ok(None) => call_with(t, this.inner, *request),
                                Ok(Some(wait)) => Step::Queued {
                                    wait,
                                    request: Some(request),
                                },
                                Err(shed) => return Poll::Ready(Err(shed)),
                            }
                        }
                        Err(TryFailed::Call { error, index, head }) => {
                            head_back(t, head);
                            // Any method if the request never reached the
                            // node, idempotent ones also after a reset or a
                            // bad response.
                            let safe = match error.reason {
                                ErrorReason::UpstreamConnect | ErrorReason::UpstreamTls => true,
                                ErrorReason::UpstreamReset | ErrorReason::UpstreamProtocol => {
                                    t.idempotent
                                }
                                _ => false,
                            };
                            let error = failed(t, error, index);
                            match safe.then(|| retry_after(t, index)).flatten() {
                                Some(backoff) => {
                                    t.last_error = Some(error);
                                    backoff
                                }
                                None => return Poll::Ready(Err(error)),
                            }
                        }
                    }
                }
            };
            this.step.set(next);
        }
    }
}

fn no_node(t: &Tries) -> ProxyError {
    ProxyError::new(
        ErrorReason::NoHealthyNode,
        format!("backend {} has no usable node", t.backend.name),
    )
}

/// A jittered backoff, if the deadline leaves room for it and the budget
/// has a retry to spend.
fn retry_pause(
    backend: &Backend,
    deadline: &Deadline,
    retry: usize,
) -> Option<std::time::Duration> {
    let base = backend.retry.backoff.mul_f64(1.0 + fastrand::f64());
    let pause = base.saturating_mul(1 << retry.min(6));
    if deadline.remaining() <= pause {
        return None;
    }
    if !backend.retry_budget.try_retry() {
        backend.stats.count(BackendEvent::RetryBudgetExhausted);
        return None;
    }
    backend.stats.count(BackendEvent::Retry);
    Some(pause)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}
