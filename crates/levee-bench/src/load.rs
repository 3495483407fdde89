//! The load generator: HTTP/1.1 keep-alive connections (hyper's client
//! connection API, no pool), each sending its next request when the last
//! answer is read (closed loop) or on a fixed schedule (open loop).
//!
//! In the open loop a request's latency runs from when it was due, not from
//! when it was sent, so a stalled connection is charged for the requests it
//! could not send (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::summary::{new_histogram, Latency};

/// One kind of traffic.
#[derive(Clone, Debug)]
pub struct Spec {
    pub target: SocketAddr,
    pub method: Method,
    pub path: &'static str,
    pub body: Bytes,
    pub conns: usize,
    /// Requests per second over all connections; `None`: closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// The client gives up on a request after this long.
    pub timeout: Duration,
}

impl Spec {
    /// GETs of `/` in a closed loop.
    pub fn reads(target: SocketAddr, conns: usize, duration: Duration) -> Spec {
        Spec {
            target,
            method: Method::GET,
            path: "/",
            body: Bytes::new(),
            conns,
            rate: None,
            duration,
            timeout: Duration::from_secs(10),
        }
    }

    /// POSTs of a small body under `/api/`, closed loop.
    pub fn writes(target: SocketAddr, conns: usize, duration: Duration) -> Spec {
        Spec {
            method: Method::POST,
            path: "/api/orders",
            body: Bytes::from_static(b"{\"order\":1}"),
            ..Spec::reads(target, conns, duration)
        }
    }
}

/// What one [`Spec`] produced.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Latency of every answered request, in µs.
    pub hist: Histogram<u64>,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed on the connection (reset, closed mid-answer).
    pub errors: u64,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Requests the client gave up on ([`Spec::timeout`]).
    pub timeouts: u64,
    /// Idle keep-alive connections the server had closed before the next
    /// request went out (reopened; not a failed request).
    pub reconnects: u64,
    pub elapsed: Duration,
}

impl Default for Outcome {
    fn default() -> Outcome {
        Outcome::new()
    }
}

impl Outcome {
    /// Nothing measured yet.
    pub fn new() -> Outcome {
        Outcome {
            hist: new_histogram(),
            statuses: BTreeMap::new(),
            errors: 0,
            connect_errors: 0,
            timeouts: 0,
            reconnects: 0,
            elapsed: Duration::ZERO,
        }
    }

    pub fn merge(&mut self, other: &Outcome) {
        let _ = self.hist.add(&other.hist);
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        self.errors += other.errors;
        self.connect_errors += other.connect_errors;
        self.timeouts += other.timeouts;
        self.reconnects += other.reconnects;
        self.elapsed = self.elapsed.max(other.elapsed);
    }

    /// Requests that got an answer.
    pub fn answered(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn count(&self, pred: impl Fn(u16) -> bool) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| pred(**s))
            .map(|(_, n)| n)
            .sum()
    }

    /// Answered 2xx.
    pub fn ok(&self) -> u64 {
        self.count(|s| (200..300).contains(&s))
    }

    /// Requests that did not get a 2xx: other statuses, errors, timeouts.
    pub fn failed(&self) -> u64 {
        self.answered() - self.ok() + self.errors + self.timeouts
    }

    /// 2xx answers per second.
    pub fn ok_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok() as f64 / secs
        } else {
            0.0
        }
    }

    pub fn latency(&self) -> Latency {
        Latency::of(&self.hist)
    }

    /// `200×812 503×40 timeout×2`: every outcome with its count.
    pub fn outcomes(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .map(|(s, n)| format!("{s}×{n}"))
            .collect();
        for (name, n) in [
            ("error", self.errors),
            ("timeout", self.timeouts),
            ("connect-error", self.connect_errors),
        ] {
            if n > 0 {
                parts.push(format!("{name}×{n}"));
            }
        }
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(" ")
        }
    }

    pub fn json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct J<'a> {
            statuses: &'a BTreeMap<u16, u64>,
            errors: u64,
            connect_errors: u64,
            timeouts: u64,
            reconnects: u64,
            elapsed_s: f64,
            ok_per_sec: f64,
            latency: Latency,
        }
        serde_json::to_value(J {
            statuses: &self.statuses,
            errors: self.errors,
            connect_errors: self.connect_errors,
            timeouts: self.timeouts,
            reconnects: self.reconnects,
            elapsed_s: self.elapsed.as_secs_f64(),
            ok_per_sec: self.ok_per_sec(),
            latency: self.latency(),
        })
        .unwrap_or_default()
    }
}

/// When connection `i` of `conns` sends its `k`-th request at `rate`
/// requests per second overall: connections are staggered by 1/rate and each
/// sends every conns/rate seconds.
pub fn due_offset(i: usize, conns: usize, k: u64, rate: f64) -> Duration {
    let secs = (i as f64 + k as f64 * conns as f64) / rate;
    Duration::from_secs_f64(secs)
}

/// Runs `spec` to completion on the current runtime; `progress` counts answers.
pub async fn run(spec: Spec, progress: Arc<AtomicU64>) -> Outcome {
    let spec = Arc::new(spec);
    let start = Instant::now();
    let tasks: Vec<_> = (0..spec.conns)
        .map(|i| tokio::spawn(connection(spec.clone(), i, start, progress.clone())))
        .collect();
    let mut total = Outcome::new();
    for t in tasks {
        if let Ok(o) = t.await {
            total.merge(&o);
        }
    }
    total.elapsed = start.elapsed();
    total
}

async fn connect(target: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(target).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn connection(
    spec: Arc<Spec>,
    i: usize,
    start: Instant,
    progress: Arc<AtomicU64>,
) -> Outcome {
    let mut out = Outcome::new();
    let end = start + spec.duration;
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut k = 0u64;
    loop {
        let due = match spec.rate {
            Some(rate) => {
                let due = start + due_offset(i, spec.conns, k, rate);
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if Instant::now() >= end {
            break;
        }
        k += 1;
        // Reuse the connection unless the server closed it while idle.
        let mut s = match sender.take() {
            Some(mut s) => match s.ready().await {
                Ok(()) => s,
                Err(_) => {
                    out.reconnects += 1;
                    match connect(spec.target).await {
                        Some(s) => s,
                        None => {
                            out.connect_errors += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
            },
            None => match connect(spec.target).await {
                Some(s) => s,
                None => {
                    out.connect_errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let req = Request::builder()
            .method(spec.method.clone())
            .uri(spec.path)
            .header(http::header::HOST, "bench")
            .body(Full::new(spec.body.clone()));
        let Ok(req) = req else { break };
        let exchange = async {
            let resp = s.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        };
        match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(Ok(status)) => {
                out.hist
                    .saturating_record(due.elapsed().as_micros().max(1) as u64);
                *out.statuses.entry(status).or_default() += 1;
                progress.fetch_add(1, Ordering::Relaxed);
                sender = Some(s);
            }
            Ok(Err(_)) => out.errors += 1,
            Err(_) => out.timeouts += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_connections_evenly() {
        // 4 connections at 100/s: one request every 10 ms overall, each
        // connection every 40 ms.
        assert_eq!(due_offset(0, 4, 0, 100.0), Duration::from_millis(0));
        assert_eq!(due_offset(1, 4, 0, 100.0), Duration::from_millis(10));
        assert_eq!(due_offset(1, 4, 1, 100.0), Duration::from_millis(50));
        assert_eq!(due_offset(3, 4, 2, 100.0), Duration::from_millis(110));
    }

    #[test]
    fn outcome_counts_and_merges() {
        let mut a = Outcome::new();
        a.statuses.insert(200, 90);
        a.statuses.insert(500, 5);
        a.errors = 3;
        a.elapsed = Duration::from_secs(2);
        let mut b = Outcome::new();
        b.statuses.insert(200, 10);
        b.timeouts = 2;
        b.hist.saturating_record(100);
        a.merge(&b);
        assert_eq!(a.answered(), 105);
        assert_eq!(a.ok(), 100);
        assert_eq!(a.failed(), 5 + 3 + 2);
        assert_eq!(a.ok_per_sec(), 50.0);
        assert_eq!(a.outcomes(), "200×100 500×5 error×3 timeout×2");
        assert_eq!(a.hist.len(), 1);
    }

    #[tokio::test]
    async fn closed_and_open_loops_against_a_node() {
        let node = levee_testkit::AppNode::start("n", levee_testkit::Behavior::default())
            .await
            .unwrap_or_else(|e| panic!("node: {e}"));
        let progress = Arc::new(AtomicU64::new(0));
        let closed = run(
            Spec::reads(node.addr(), 2, Duration::from_millis(300)),
            progress.clone(),
        )
        .await;
        assert!(closed.ok() > 10, "{}", closed.outcomes());
        assert_eq!(closed.failed(), 0, "{}", closed.outcomes());
        assert_eq!(progress.load(Ordering::Relaxed), closed.ok());

        let open = Spec {
            rate: Some(100.0),
            ..Spec::writes(node.addr(), 2, Duration::from_millis(500))
        };
        let open = run(open, progress).await;
        // 50 due in 0.5 s; a loaded machine may not fit the last few in.
        assert!((30..=50).contains(&open.ok()), "{}", open.outcomes());
        assert_eq!(open.latency().count, open.ok());
    }
}
