//! Shared harness for the end-to-end tests: levee and testkit app nodes on
//! loopback ports chosen by the kernel, and a plain HTTP client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use levee::Levee;
use levee_config::{Config, NodeAddr};
use levee_testkit::{AppNode, Behavior};

pub use levee::traffic::{client, HttpClient};
pub use levee_telemetry::BackendEvent;

/// Starts levee from `toml` on kernel-chosen ports; `nodes[i]` replaces the
/// node list of the i-th backend.
pub async fn start_levee(toml: &str, nodes: &[&[SocketAddr]]) -> Levee {
    Levee::start(test_config(toml, nodes)).await.unwrap()
}

/// `toml` parsed and pointed at the test's ports: both listeners on
/// `127.0.0.1:0` (kernel-chosen), and `nodes[i]` as the node list of the
/// i-th backend. A reload with a config built here changes neither listener.
pub fn test_config(toml: &str, nodes: &[&[SocketAddr]]) -> Config {
    let mut config = levee_config::parse(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    for (backend, addrs) in config.backends.iter_mut().zip(nodes) {
        backend.nodes = addrs.iter().map(|a| NodeAddr::Ip(*a)).collect();
    }
    config
}

/// A fresh directory under the system temp dir, named after the test and
/// this process, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("levee-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback address that was free a moment ago (bound, read, released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The admin `/status` document.
pub async fn status_json(client: &HttpClient, levee: &Levee) -> serde_json::Value {
    let got = get(client, &admin_url(levee, "/status")).await;
    assert_eq!(got.status, StatusCode::OK);
    serde_json::from_slice(&got.body).unwrap()
}

/// The admin `/metrics` text.
pub async fn metrics_text(client: &HttpClient, levee: &Levee) -> String {
    let got = get(client, &admin_url(levee, "/metrics")).await;
    assert_eq!(got.status, StatusCode::OK);
    String::from_utf8_lossy(&got.body).into_owned()
}

pub async fn node(behavior: Behavior) -> AppNode {
    AppNode::start("test-node", behavior).await.unwrap()
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Got {
    pub fn reason(&self) -> Option<&str> {
        self.headers
            .get("x-levee-error")
            .and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and reads the whole response; panics after `limit`.
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>, limit: Duration) -> Got {
    let started = tokio::time::Instant::now();
    let fut = async {
        let resp = client.request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
            elapsed: started.elapsed(),
        }
    };
    tokio::time::timeout(limit, fut)
        .await
        .expect("response within the limit")
}

pub async fn get(client: &HttpClient, url: &str) -> Got {
    send(client, request(Method::GET, url), Duration::from_secs(10)).await
}

pub fn request(method: Method, url: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One testkit node per behaviour, in order.
pub async fn nodes(behaviors: Vec<Behavior>) -> Vec<AppNode> {
    let mut out = Vec::new();
    for b in behaviors {
        out.push(node(b).await);
    }
    out
}

pub fn addrs(nodes: &[AppNode]) -> Vec<SocketAddr> {
    nodes.iter().map(AppNode::addr).collect()
}

/// How many times the `backend`-th backend (in config order) counted `event`.
pub fn backend_events(levee: &Levee, backend: usize, event: BackendEvent) -> u64 {
    levee.telemetry.topology().backends[backend]
        .stats
        .events(event)
}

/// Polls `check` every 20 ms for up to `limit`; true once it holds.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Slots held in every bulkhead of the live topology.
pub fn slots_held(levee: &Levee) -> usize {
    let topo = levee.telemetry.topology();
    let backends: usize = topo
        .backends
        .iter()
        .map(|b| b.stats.bulkhead.in_flight())
        .sum();
    let routes: usize = topo
        .routes
        .iter()
        .filter_map(|r| r.bulkhead.as_ref())
        .map(|b| b.in_flight())
        .sum();
    backends + routes
}

/// A client that speaks HTTP/2 with prior knowledge.
pub fn h2_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>()
}

pub fn url(levee: &Levee, path: &str) -> String {
    format!("http://{}{path}", levee.proxy_addr)
}

pub fn admin_url(levee: &Levee, path: &str) -> String {
    format!("http://{}{path}", levee.admin_addr)
}

/// One backend `app` (nodes set by the test) and a catch-all route.
pub const ONE_ROUTE: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "100ms"
timeout = "2s"
max_in_flight = 8
max_queue = 4
queue_timeout = "100ms"

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#;
