//! A small closed-loop HTTP load generator for the demo (and tests): a few
//! workers send requests back to back and tally what they got back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What one request got: status and levee's reason, or a client-side failure.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub key: String,
    pub ok: bool,
    pub latency: Duration,
}

/// Sends one request and reads its whole response, within `limit`.
pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: &'static [u8],
    limit: Duration,
) -> Outcome {
    let started = Instant::now();
    let req = match Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(body)))
    {
        Ok(r) => r,
        Err(e) => return outcome(format!("bad request: {e}"), false, started),
    };
    let fut = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let reason = resp
            .headers()
            .get("x-levee-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        resp.into_body().collect().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, reason))
    };
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok((status, reason))) => {
            let key = match reason {
                Some(r) => format!("{} {r}", status.as_u16()),
                None => status.as_u16().to_string(),
            };
            outcome(key, status.is_success(), started)
        }
        Ok(Err(_)) => outcome("connection error".into(), false, started),
        Err(_) => outcome(format!("no answer in {limit:?}"), false, started),
    }
}

fn outcome(key: String, ok: bool, started: Instant) -> Outcome {
    Outcome {
        key,
        ok,
        latency: started.elapsed(),
    }
}

/// Outcomes of many requests.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_key: BTreeMap<String, u64>,
    pub latencies: Vec<Duration>,
}

impl Tally {
    pub fn add(&mut self, o: Outcome) {
        *self.by_key.entry(o.key).or_default() += 1;
        self.latencies.push(o.latency);
    }

    pub fn total(&self) -> u64 {
        self.by_key.values().sum()
    }

    /// Responses with a 2xx status.
    pub fn successes(&self) -> u64 {
        self.starting_with('2')
    }

    /// Responses with a 5xx status (the node's own or levee's).
    pub fn server_errors(&self) -> u64 {
        self.starting_with('5')
    }

    fn starting_with(&self, class: char) -> u64 {
        self.by_key
            .iter()
            .filter(|(k, _)| k.starts_with(class))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn count(&self, key: &str) -> u64 {
        self.by_key.get(key).copied().unwrap_or(0)
    }

    /// The `q` quantile (0.0..=1.0) of latencies.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        if l.is_empty() {
            return Duration::ZERO;
        }
        let i = ((l.len() - 1) as f64 * q).round() as usize;
        l[i.min(l.len() - 1)]
    }
}

/// Outcomes as they arrive, shared between the clients and a reader that
/// takes them out at intervals (the demo's per-second table).
#[derive(Debug, Clone, Default)]
pub struct Live(Arc<Mutex<Tally>>);

impl Live {
    pub fn record(&self, o: &Outcome) {
        if let Ok(mut t) = self.0.lock() {
            t.add(o.clone());
        }
    }

    /// What arrived since the last call.
    pub fn take(&self) -> Tally {
        self.0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

/// `workers` loops sending `method url` until `duration` has passed.
pub async fn drive(
    client: &HttpClient,
    method: Method,
    url: impl Into<String>,
    workers: usize,
    duration: Duration,
) -> Tally {
    drive_live(client, method, url, workers, duration, &Live::default()).await
}

/// Like [`drive`], also recording each outcome in `live` as it arrives.
pub async fn drive_live(
    client: &HttpClient,
    method: Method,
    url: impl Into<String>,
    workers: usize,
    duration: Duration,
    live: &Live,
) -> Tally {
    drive_paced(client, method, url, workers, duration, live, Duration::ZERO).await
}

/// Like [`drive_live`], each worker waiting `after_503` after a 503 before
/// its next request, as a client honouring `Retry-After` does (a refusal
/// answered in microseconds would otherwise be most of what is counted).
pub async fn drive_paced(
    client: &HttpClient,
    method: Method,
    url: impl Into<String>,
    workers: usize,
    duration: Duration,
    live: &Live,
    after_503: Duration,
) -> Tally {
    let url: String = url.into();
    let until = Instant::now() + duration;
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let client = client.clone();
        let method = method.clone();
        let url = url.clone();
        let live = live.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let body: &'static [u8] = if method == Method::GET {
                b""
            } else {
                b"{\"order\":1}"
            };
            while Instant::now() < until {
                let o = send(&client, method.clone(), &url, body, Duration::from_secs(5)).await;
                live.record(&o);
                let refused = o.key.starts_with("503");
                tally.add(o);
                if refused && !after_503.is_zero() {
                    tokio::time::sleep(after_503).await;
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            for (k, v) in t.by_key {
                *all.by_key.entry(k).or_default() += v;
            }
            all.latencies.extend(t.latencies);
        }
    }
    all
}
