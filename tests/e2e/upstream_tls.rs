//! TLS and HTTP/2 to the nodes: verification on by default (trusted CA
//! passes, an untrusted certificate is 502 upstream-tls), `tls_server_name`,
//! client certificates, and HTTP/2 multiplexing many requests over few
//! connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{StatusCode, Version};
use levee::Levee;
use levee_testkit::{AppNode, Behavior, NodeOptions};

use crate::common::{client, get, metrics_text, url, Got, TempDir};
use crate::pki::Ca;

/// levee with one backend `app` whose extra keys are `backend_keys`; files
/// named there are relative to `dir`.
async fn start(dir: &TempDir, node: SocketAddr, backend_keys: &str) -> Levee {
    let file = dir.path("levee.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1

[admin]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["{node}"]
connect_timeout = "2s"
timeout = "5s"
max_in_flight = 64
{backend_keys}

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#
    );
    std::fs::write(&file, text).unwrap();
    let config = levee_config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    Levee::start(config).await.unwrap()
}

/// One GET of `/x` through a levee started as [`start`] does, then shut down.
async fn get_once(dir: &TempDir, node: SocketAddr, backend_keys: &str) -> Got {
    let levee = start(dir, node, backend_keys).await;
    let got = get(&client(), &url(&levee, "/x")).await;
    levee.shutdown().await;
    got
}

async fn tls_node(config: Arc<rustls::ServerConfig>, http2: bool) -> AppNode {
    let options = NodeOptions {
        tls: Some(config),
        http2,
        ..Default::default()
    };
    let addr = "127.0.0.1:0".parse().unwrap();
    AppNode::start_with(
        addr,
        "tls-node",
        Behavior::Healthy { body_bytes: 16 },
        options,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn a_node_with_a_certificate_from_the_configured_ca_is_served_and_others_are_502_upstream_tls(
) {
    let dir = TempDir::new("up-tls-ca");
    let ca = Ca::new("node CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let stranger = Ca::new("someone else");
    std::fs::write(dir.path("other-ca.pem"), stranger.pem()).unwrap();
    // The default server name is the node's IP address.
    let leaf = ca.issue(&["127.0.0.1"]);
    let app = tls_node(leaf.server_config(&[b"http/1.1"]), false).await;

    let ok = get_once(&dir, app.addr(), "tls = true\ntls_ca = \"ca.pem\"").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body.len(), 16);
    assert_eq!(app.stats().requests, 1);

    let levee = start(&dir, app.addr(), "tls = true\ntls_ca = \"other-ca.pem\"").await;
    let refused = get(&client(), &url(&levee, "/x")).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
    assert_eq!(refused.reason(), Some("upstream-tls"));
    assert_eq!(app.stats().requests, 1, "nothing reached the node");
    // Counted against the node, like a failed connect.
    let metrics = metrics_text(&client(), &levee).await;
    let line = format!(
        "levee_node_errors_total{{backend=\"app\",node=\"{}\",reason=\"upstream-tls\"}} 1",
        app.addr()
    );
    assert!(metrics.contains(&line), "{line}\n{metrics}");
    levee.shutdown().await;

    // Without tls_ca the webpki roots apply, which do not know this CA.
    let refused = get_once(&dir, app.addr(), "tls = true").await;
    assert_eq!(refused.reason(), Some("upstream-tls"));
}

#[tokio::test]
async fn tls_server_name_is_what_the_node_certificate_is_verified_against() {
    let dir = TempDir::new("up-tls-name");
    let ca = Ca::new("node CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let leaf = ca.issue(&["app.internal"]);
    let app = tls_node(leaf.server_config(&[b"http/1.1"]), false).await;

    // The node's IP is not in its certificate.
    let refused = get_once(&dir, app.addr(), "tls = true\ntls_ca = \"ca.pem\"").await;
    assert_eq!(refused.reason(), Some("upstream-tls"));

    let ok = get_once(
        &dir,
        app.addr(),
        "tls = true\ntls_ca = \"ca.pem\"\ntls_server_name = \"app.internal\"",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);

    // Verification off: any certificate passes, and `levee check` says so.
    let ok = get_once(
        &dir,
        app.addr(),
        "tls = true\ntls_insecure_skip_verify = true",
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["check", "--config"])
        .arg(dir.path("levee.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("http1, tls WITHOUT certificate verification"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_node_given_by_name_is_verified_against_that_name() {
    let dir = TempDir::new("up-tls-dns");
    let ca = Ca::new("node CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let leaf = ca.issue(&["localhost"]);
    let app = tls_node(leaf.server_config(&[b"http/1.1"]), false).await;
    let file = dir.path("levee.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[backend]]\nname = \"app\"\nnodes = [\"localhost:{}\"]\ntls = true\ntls_ca = \"ca.pem\"\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
        app.addr().port()
    );
    std::fs::write(&file, text).unwrap();
    let levee = Levee::start(levee_config::load(&file).unwrap())
        .await
        .unwrap();
    let ok = get(&client(), &url(&levee, "/x")).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.reason());
    levee.shutdown().await;
}

#[tokio::test]
async fn a_node_that_requires_a_client_certificate_gets_the_configured_one() {
    let dir = TempDir::new("up-tls-mtls");
    let ca = Ca::new("node CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let clients = Ca::new("client CA");
    let leaf = ca.issue(&["127.0.0.1"]);
    let app = tls_node(leaf.server_config_requiring_client(&clients), false).await;
    clients.issue(&["levee.client"]).write(&dir, "client");

    let levee = start(&dir, app.addr(), "tls = true\ntls_ca = \"ca.pem\"").await;
    let refused = get(&client(), &url(&levee, "/x")).await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_GATEWAY,
        "no client certificate"
    );
    // TLS 1.3: the node's refusal arrives as an alert after the handshake.
    assert_eq!(refused.reason(), Some("upstream-tls"));
    levee.shutdown().await;

    let ok = get_once( &dir, app.addr(), "tls = true\ntls_ca = \"ca.pem\"\ntls_client_cert = \"client.pem\"\ntls_client_key = \"client.key\"", ).await;
    assert_eq!(ok.status, StatusCode::OK);
}

/// Many concurrent requests over HTTP/2 reach the node over one or two
/// connections (h2c here, ALPN h2 over TLS below).
async fn assert_multiplexed(app: &AppNode, levee: &Levee) {
    let http = client();
    let calls = (0..24).map(|i| {
        let http = http.clone();
        let url = url(levee, &format!("/m/{i}"));
        async move { get(&http, &url).await.status }
    });
    let statuses = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(calls),
    )
    .await
    .unwrap();
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let recorded = app.recorded();
    assert!(recorded.len() >= 24);
    assert!(recorded.iter().all(|r| r.version == Version::HTTP_2));
    let connections = app.stats().connections;
    assert!(
        connections <= 2,
        "24 concurrent requests took {connections} connections"
    );
}

#[tokio::test]
async fn http2_to_nodes_multiplexes_requests_over_few_connections() {
    let dir = TempDir::new("up-h2");
    let slow = Behavior::Slow {
        delay: Duration::from_millis(300),
        body_bytes: 16,
    };
    let h2c = AppNode::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "h2c-node",
        slow.clone(),
        NodeOptions {
            http2: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let levee = start(&dir, h2c.addr(), "protocol = \"http2\"").await;
    assert_multiplexed(&h2c, &levee).await;
    levee.shutdown().await;

    let ca = Ca::new("node CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    let leaf = ca.issue(&["127.0.0.1"]);
    let h2 = AppNode::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "h2-node",
        slow,
        NodeOptions {
            tls: Some(leaf.server_config(&[b"h2"])),
            http2: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let levee = start(
        &dir,
        h2.addr(),
        "protocol = \"http2\"\ntls = true\ntls_ca = \"ca.pem\"",
    )
    .await;
    assert_multiplexed(&h2, &levee).await;
    levee.shutdown().await;
}

/// A node that allows 2 concurrent streams per connection: levee queues the
/// rest instead of opening streams the node would refuse, so every request
/// succeeds and the whole set takes at least as long as the limit allows.
#[tokio::test]
async fn http2_to_nodes_respects_the_node_stream_limit() {
    const STREAMS: u32 = 2;
    const REQUESTS: u32 = 12;
    let delay = Duration::from_millis(200);
    let dir = TempDir::new("up-h2-streams");
    let app = AppNode::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "h2c-limited",
        Behavior::Slow {
            delay,
            body_bytes: 16,
        },
        NodeOptions {
            http2: true,
            max_concurrent_streams: Some(STREAMS),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let levee = start(&dir, app.addr(), "protocol = \"http2\"").await;
    // One request first, so the node's SETTINGS are known before the burst.
    assert_eq!(
        get(&client(), &url(&levee, "/warm")).await.status,
        StatusCode::OK
    );

    let http = client();
    let started = tokio::time::Instant::now();
    let calls = (0..REQUESTS).map(|i| {
        let http = http.clone();
        let url = url(&levee, &format!("/s/{i}"));
        async move {
            let got = get(&http, &url).await;
            (got.status, got.reason().map(str::to_owned))
        }
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(calls),
    )
    .await
    .unwrap();
    let elapsed = started.elapsed();
    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{answers:?}"
    );
    assert_eq!(app.stats().requests, u64::from(REQUESTS) + 1);
    // With c connections at most 2c requests run at once.
    let connections = u32::try_from(app.stats().connections).unwrap();
    let rounds = REQUESTS.div_ceil(STREAMS * connections);
    assert!(
        elapsed >= delay * rounds,
        "{REQUESTS} requests over {connections} connection(s) took {elapsed:?}, \
         less than {rounds} rounds of {delay:?}: the stream limit was not respected"
    );
    levee.shutdown().await;
}

/// Over HTTP/2 to a node the deadline, the bulkhead and the breaker act as
/// they do over HTTP/1: a stuck node's requests end 504 `deadline`, those
/// past `max_in_flight` wait their queue time and get 503 `bulkhead-full`,
/// and the third failure in a row opens the node's breaker.
#[tokio::test]
async fn over_http2_to_nodes_deadlines_bulkheads_and_breakers_act_the_same() {
    let dir = TempDir::new("up-h2-resilience");
    let stuck = AppNode::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "h2c-stuck",
        Behavior::Stuck,
        NodeOptions {
            http2: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let file = dir.path("levee.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1

[[backend]]
name = "app"
nodes = ["{}"]
protocol = "http2"
connect_timeout = "300ms"
timeout = "400ms"
max_in_flight = 2
queue_timeout = "50ms"

[backend.breaker]
consecutive_failures = 3
open_for = "30s"
open_for_max = "60s"

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
priority = "critical"
"#,
        stuck.addr()
    );
    std::fs::write(&file, text).unwrap();
    let config = levee_config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let levee = Levee::start(config).await.unwrap();
    let http = client();

    // Four at once against two slots: two reach the node and hit the
    // deadline, two wait 50 ms in the queue and are refused.
    let calls = (0..4).map(|i| {
        let http = http.clone();
        let url = url(&levee, &format!("/b/{i}"));
        async move {
            let started = tokio::time::Instant::now();
            let got = get(&http, &url).await;
            (
                got.status,
                got.reason().map(str::to_owned),
                started.elapsed(),
            )
        }
    });
    let answers = futures_util::future::join_all(calls).await;
    let count = |reason: &str| {
        answers
            .iter()
            .filter(|(_, r, _)| r.as_deref() == Some(reason))
            .count()
    };
    assert_eq!(count("deadline"), 2, "{answers:?}");
    assert_eq!(count("bulkhead-full"), 2, "{answers:?}");
    for (status, reason, took) in &answers {
        match reason.as_deref() {
            Some("deadline") => {
                assert_eq!(*status, StatusCode::GATEWAY_TIMEOUT);
                assert!(*took >= Duration::from_millis(350), "{took:?}");
                assert!(*took < Duration::from_secs(5), "{took:?}");
            }
            _ => assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    // The third deadline in a row opens the breaker: the next request is
    // refused without reaching the node.
    let third = get(&http, &url(&levee, "/c")).await;
    assert_eq!(third.reason(), Some("deadline"));
    let seen = stuck.stats().requests;
    let refused = get(&http, &url(&levee, "/d")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.reason(), Some("no-healthy-node"));
    assert_eq!(
        stuck.stats().requests,
        seen,
        "nothing more reached the node"
    );
    levee.shutdown().await;
}
