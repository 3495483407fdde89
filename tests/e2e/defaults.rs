//! A config that sets no limits must not refuse a spike on a healthy, fast
//! backend: 1,000 requests at once, over HTTP/1.1 and over HTTP/2, all 200.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use levee_testkit::Behavior;

use crate::common::*;

/// No bulkhead, queue or shedding key: every default applies (only the
/// connect timeout is raised, see below).
const NO_LIMITS: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
# Not a limit on load: a thousand connects from this one loaded test
# process may take longer than the 1 s default on a busy machine.
connect_timeout = "5s"

[[route]]
path_prefix = "/"
backend = "app"
"#;

const AT_ONCE: usize = 1_000;

/// Statuses (and reasons) of `AT_ONCE` GETs sent together through `client`.
async fn burst<C>(client: &Client<C, Full<Bytes>>, url: &str) -> Vec<(StatusCode, String)>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let client = client.clone();
            let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
            tokio::spawn(async move {
                let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
                    .await
                    .expect("an answer within 30 s")
                    .expect("a response");
                let reason = resp
                    .headers()
                    .get("x-levee-error")
                    .map(|v| v.to_str().unwrap_or("").to_owned())
                    .unwrap_or_default();
                let status = resp.status();
                resp.into_body().collect().await.unwrap();
                (status, reason)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(AT_ONCE);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// The backend's nodes as `/status` shows them (breakers, load), for a
/// failure message.
async fn node_states(levee: &levee::Levee) -> serde_json::Value {
    status_json(&client(), levee).await["backends"][0]["nodes"].clone()
}

fn refused(got: &[(StatusCode, String)]) -> Vec<&(StatusCode, String)> {
    got.iter().filter(|(s, _)| *s != StatusCode::OK).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_at_once_on_a_healthy_backend_are_all_served() {
    // Client, levee and node share this process: about 4,000 sockets.
    let _ = rlimit::increase_nofile_limit(16_384);
    // 50 ms answers keep the whole burst in flight at the same time.
    let app = node(Behavior::Slow {
        delay: Duration::from_millis(50),
        body_bytes: 8,
    })
    .await;
    let levee = start_levee(NO_LIMITS, &[&[app.addr()]]).await;
    let url = url(&levee, "/burst");

    let h1 = Client::builder(TokioExecutor::new()).build_http();
    let got = burst(&h1, &url).await;
    assert_eq!(got.len(), AT_ONCE);
    let bad = refused(&got);
    let nodes = node_states(&levee).await;
    assert!(
        bad.is_empty(),
        "HTTP/1.1: {} refused, e.g. {:?}; nodes: {nodes}",
        bad.len(),
        bad.first()
    );

    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let got = burst(&h2, &url).await;
    let bad = refused(&got);
    let nodes = node_states(&levee).await;
    assert!(
        bad.is_empty(),
        "HTTP/2: {} refused, e.g. {:?}; nodes: {nodes}",
        bad.len(),
        bad.first()
    );

    assert_eq!(backend_events(&levee, 0, BackendEvent::Shed), 0);
    assert!(eventually(Duration::from_secs(5), || slots_held(&levee) == 0).await);
    levee.shutdown().await;
}
