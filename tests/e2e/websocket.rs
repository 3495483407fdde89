//! WebSocket tunnels: handshakes pass, bytes flow both ways until a side
//! closes, tunnels have their own idle timeout and cap and hold no bulkhead
//! slot; other upgrades are never forwarded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use levee::Levee;
use levee_telemetry::TunnelClose;
use levee_testkit::{AppNode, Behavior};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::common::*;

type Ws = WebSocketStream<TcpStream>;

/// A route `chat` with a bulkhead of 2 slots and 2 tunnels; `extra` adds
/// route keys.
fn config(extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "1s"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "500ms"
timeout = "5s"
max_in_flight = 8
max_queue = 0

[[route]]
name = "chat"
path_prefix = "/"
backend = "app"
max_in_flight = 2
max_queue = 0
max_tunnels = 2
{extra}
"#
    )
}

async fn setup(extra: &str) -> (AppNode, Levee) {
    let app = node(Behavior::WebSocketEcho).await;
    let levee = start_levee(&config(extra), &[&[app.addr()]]).await;
    (app, levee)
}

/// A WebSocket handshake through levee: the tunnel, or the refusal.
async fn connect(levee: &Levee) -> Result<Ws, WsError> {
    let tcp = TcpStream::connect(levee.proxy_addr).await.unwrap();
    let url = format!("ws://{}/chat", levee.proxy_addr);
    let handshake = tokio_tungstenite::client_async(url, tcp);
    match tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .expect("handshake answered within 10 s")
    {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            Ok(ws)
        }
        Err(e) => Err(e),
    }
}

/// The next message, within 10 s.
async fn next(ws: &mut Ws) -> Option<Result<Message, WsError>> {
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a message or the end within 10 s")
}

async fn echoed(ws: &mut Ws, message: Message) {
    ws.send(message.clone()).await.unwrap();
    match next(ws).await {
        Some(Ok(got)) => assert_eq!(got, message),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Reads until the tunnel ends; true if it ended (and not with a message).
async fn ends(ws: &mut Ws, limit: Duration) -> bool {
    let until = tokio::time::Instant::now() + limit;
    for _ in 0..100 {
        match tokio::time::timeout_at(until, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_))) => return true,
            Ok(Some(Ok(Message::Close(_)))) => {}
            Ok(Some(Ok(other))) => panic!("unexpected message {other:?}"),
        }
    }
    false
}

fn tunnels(levee: &Levee) -> std::sync::Arc<levee_telemetry::RouteStats> {
    std::sync::Arc::clone(&levee.telemetry.topology().routes[0])
}

fn closed(levee: &Levee) -> u64 {
    let route = tunnels(levee);
    TunnelClose::ALL
        .iter()
        .map(|why| route.tunnels.closed_total(*why))
        .sum()
}

#[tokio::test]
async fn text_and_a_100_kib_binary_message_echo_and_the_close_handshake_completes() {
    let (app, levee) = setup("").await;
    let mut ws = connect(&levee).await.unwrap();
    echoed(&mut ws, Message::text("hello through levee")).await;
    let big: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
    echoed(&mut ws, Message::binary(big)).await;

    // The node got the handshake with its headers.
    let seen = app.recorded();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert!(h.contains_key("sec-websocket-key"));
    assert_eq!(h["sec-websocket-version"], "13");

    // The open tunnel holds no bulkhead slot, and its node connection is
    // not pooled: an ordinary request opens a new one.
    assert_eq!(slots_held(&levee), 0);
    assert_eq!(tunnels(&levee).tunnels.open(), 1);
    let client = client();
    let got = get(&client, &url(&levee, "/plain")).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(app.stats().connections, 2);

    let status = status_json(&client, &levee).await;
    let shown = &status["routes"][0]["tunnels"];
    assert_eq!(shown["open"], 1, "{status}");
    assert_eq!(shown["max"], 2);
    assert_eq!(shown["opened"], 1);

    ws.close(None).await.unwrap();
    assert!(ends(&mut ws, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(5), || closed(&levee) == 1).await,
        "the tunnel is counted closed"
    );
    assert_eq!(tunnels(&levee).tunnels.open(), 0);
    let route = tunnels(&levee);
    assert_eq!(route.tunnels.closed_total(TunnelClose::Idle), 0);
    let metrics = metrics_text(&client, &levee).await;
    assert!(
        metrics.contains("levee_route_tunnels_open{route=\"chat\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("levee_tunnels_opened_total{route=\"chat\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("levee_tunnels_closed_total{route=\"chat\",reason=\"idle\"} 0"));
}

#[tokio::test]
async fn a_silent_tunnel_is_cut_at_its_idle_timeout() {
    let (_app, levee) = setup("tunnel_idle_timeout = \"400ms\"").await;
    let mut ws = connect(&levee).await.unwrap();
    echoed(&mut ws, Message::text("one")).await;
    let quiet = tokio::time::Instant::now();
    assert!(ends(&mut ws, Duration::from_secs(10)).await);
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(350), "cut after {waited:?}");
    assert!(
        eventually(Duration::from_secs(5), || {
            tunnels(&levee).tunnels.closed_total(TunnelClose::Idle) == 1
        })
        .await
    );
    assert_eq!(tunnels(&levee).tunnels.open(), 0);
}

#[tokio::test]
async fn tunnels_are_capped_per_route_and_leave_the_bulkhead_to_requests() {
    let (_app, levee) = setup("").await;
    let mut first = connect(&levee).await.unwrap();
    let _second = connect(&levee).await.unwrap();
    echoed(&mut first, Message::text("a")).await;

    match connect(&levee).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()["x-levee-error"], "tunnel-limit");
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected 503 tunnel-limit, got {other:?}"),
    }
    // Two tunnels on a route of two slots: ordinary requests still pass.
    let client = client();
    for _ in 0..5 {
        let got = get(&client, &url(&levee, "/plain")).await;
        assert_eq!(got.status, StatusCode::OK, "{:?}", got.reason());
    }

    first.close(None).await.unwrap();
    assert!(ends(&mut first, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(5), || tunnels(&levee).tunnels.open()
            == 1)
        .await
    );
    let mut third = connect(&levee).await.unwrap();
    echoed(&mut third, Message::text("room again")).await;
    assert_eq!(
        tunnels(&levee)
            .outcomes
            .reason(levee_telemetry::ErrorReason::TunnelLimit),
        1
    );
}

#[tokio::test]
async fn a_declined_handshake_is_passed_on_as_a_normal_response() {
    let app = node(Behavior::Status {
        code: 403,
        share: 1.0,
        methods: None,
    })
    .await;
    let levee = start_levee(&config(""), &[&[app.addr()]]).await;
    match connect(&levee).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN);
            assert!(!resp.headers().contains_key("x-levee-error"));
            assert_eq!(resp.headers()["x-node"], "test-node");
        }
        other => panic!("expected the node's 403, got {other:?}"),
    }
    assert_eq!(tunnels(&levee).tunnels.open(), 0);
    assert_eq!(tunnels(&levee).tunnels.opened_total(), 0);
    assert!(eventually(Duration::from_secs(5), || slots_held(&levee) == 0).await);
}

#[tokio::test]
async fn a_node_that_dies_mid_tunnel_closes_the_client_side() {
    let (app, levee) = setup("").await;
    let mut ws = connect(&levee).await.unwrap();
    echoed(&mut ws, Message::text("still there?")).await;
    app.set_behavior(Behavior::Refuse).await.unwrap();
    assert!(ends(&mut ws, Duration::from_secs(10)).await);
    drop(ws);
    assert!(
        eventually(Duration::from_secs(5), || {
            tunnels(&levee).tunnels.closed_total(TunnelClose::Node) == 1
        })
        .await
    );
}

/// Writes `head` on a fresh connection and reads the answer until the
/// node's 2-byte body (or the connection's end).
async fn raw(levee: &Levee, head: &str) -> String {
    let mut tcp = TcpStream::connect(levee.proxy_addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer));
    read.await.expect("answered within 10 s").unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn other_upgrades_are_stripped_and_broken_handshakes_refused() {
    let (app, levee) = setup("").await;

    // h2c (as `curl --http2` sends it): an ordinary HTTP/1.1 exchange, and
    // the node never sees the upgrade.
    let answer = raw(
        &levee,
        "GET /h2c HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings, close\r\n\
         upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A WebSocket upgrade on HTTP/1.0 is ignored too (RFC 9110 §7.8).
    let answer = raw(
        &levee,
        "GET /old HTTP/1.0\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = app.recorded();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        for name in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !request.headers.contains_key(name),
                "{} got {name}: {:?}",
                request.uri,
                request.headers
            );
        }
    }

    // A WebSocket handshake that is not a GET, or offers other protocols
    // too, is refused and reaches no node.
    for head in [
        "POST /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\
         content-length: 0\r\n\r\n",
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade, close\r\n\
         upgrade: h2c, websocket\r\n\r\n",
    ] {
        let answer = raw(&levee, head).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("x-levee-error: bad-upgrade"), "{answer}");
    }
    assert_eq!(app.recorded().len(), 2);
}

#[tokio::test]
async fn open_tunnels_are_cut_when_the_shutdown_grace_ends() {
    let (_app, levee) = setup("").await;
    let mut ws = connect(&levee).await.unwrap();
    echoed(&mut ws, Message::text("before")).await;
    let started = tokio::time::Instant::now();
    let stopping = tokio::spawn(levee.shutdown());
    // Still carried during the grace period.
    echoed(&mut ws, Message::text("during")).await;
    assert!(ends(&mut ws, Duration::from_secs(10)).await);
    let left = stopping.await.unwrap();
    assert_eq!(left, 1, "the tunnel's connection outlived the grace period");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_reload_applies_new_caps_and_idle_timeouts_to_new_tunnels() {
    let app = node(Behavior::WebSocketEcho).await;
    let mut levee = start_levee(&config(""), &[&[app.addr()]]).await;
    let mut kept = connect(&levee).await.unwrap();
    echoed(&mut kept, Message::text("before")).await;

    let tighter =
        config("tunnel_idle_timeout = \"400ms\"").replace("max_tunnels = 2", "max_tunnels = 1");
    levee
        .reload(test_config(&tighter, &[&[app.addr()]]))
        .await
        .unwrap();
    match connect(&levee).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.headers()["x-levee-error"], "tunnel-limit"),
        other => panic!("the open tunnel fills the new cap of 1, got {other:?}"),
    }
    kept.close(None).await.unwrap();
    assert!(ends(&mut kept, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(5), || tunnels(&levee).tunnels.open()
            == 0)
        .await
    );

    // A new tunnel runs on the new idle timeout.
    let mut fresh = connect(&levee).await.unwrap();
    echoed(&mut fresh, Message::text("after")).await;
    assert!(ends(&mut fresh, Duration::from_secs(10)).await);
    assert!(
        eventually(Duration::from_secs(5), || {
            tunnels(&levee).tunnels.closed_total(TunnelClose::Idle) == 1
        })
        .await
    );
}

#[tokio::test]
async fn the_request_deadlines_bound_the_handshake_not_the_tunnel() {
    let app = node(Behavior::WebSocketEcho).await;
    let cfg = config("").replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\ntotal_timeout = \"600ms\"",
    );
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    let mut ws = connect(&levee).await.unwrap();
    // 1.5 s of steady traffic, well past total_timeout.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        echoed(&mut ws, Message::text(format!("still open {i}"))).await;
    }
    assert_eq!(closed(&levee), 0);
}

#[tokio::test]
async fn a_handshake_to_an_http2_backend_goes_on_as_an_ordinary_request() {
    let app = levee_testkit::AppNode::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "h2-node",
        Behavior::WebSocketEcho,
        levee_testkit::NodeOptions {
            http2: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cfg = config("").replace(
        "max_queue = 0\n\n[[route]]",
        "max_queue = 0\nprotocol = \"http2\"\n\n[[route]]",
    );
    assert!(cfg.contains("protocol = \"http2\""));
    let levee = start_levee(&cfg, &[&[app.addr()]]).await;
    match connect(&levee).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), StatusCode::OK),
        other => panic!("expected the node's plain 200, got {other:?}"),
    }
    let seen = app.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert!(!seen[0].headers.contains_key("upgrade"));
    assert_eq!(tunnels(&levee).tunnels.opened_total(), 0);
}

#[tokio::test]
async fn a_tunnel_runs_over_tls_on_both_sides() {
    let dir = TempDir::new("wss");
    let ca = crate::pki::Ca::new("wss CA");
    std::fs::write(dir.path("ca.pem"), ca.pem()).unwrap();
    ca.issue(&["chat.test"]).write(&dir, "front");
    let node_leaf = ca.issue(&["127.0.0.1"]);
    let app = levee_testkit::AppNode::start_with(
        "127.0.0.1:0".parse().unwrap(),
        "tls-node",
        Behavior::WebSocketEcho,
        levee_testkit::NodeOptions {
            tls: Some(node_leaf.server_config(&[b"http/1.1"])),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let text = config("")
        .replace(
            "shutdown_grace = \"1s\"\n",
            "shutdown_grace = \"1s\"\n\n[server.tls]\nlisten = \"127.0.0.1:0\"\n\n\
             [[server.tls.certificate]]\ncert = \"front.pem\"\nkey = \"front.key\"\n",
        )
        .replace(
            "max_queue = 0\n\n[[route]]",
            "max_queue = 0\ntls = true\ntls_ca = \"ca.pem\"\n\n[[route]]",
        )
        .replace(
            "nodes = [\"127.0.0.1:1\"]",
            &format!("nodes = [\"{}\"]", app.addr()),
        );
    let file = dir.path("levee.toml");
    std::fs::write(&file, text).unwrap();
    let mut config = levee_config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    let levee = Levee::start(config).await.unwrap();

    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(ca.client_config(&[b"http/1.1"])));
    let tcp = TcpStream::connect(levee.tls_addr.unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("chat.test").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let handshake = tokio_tungstenite::client_async("wss://chat.test/chat", tls);
    let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let message = Message::text(format!("over tls {i}"));
        ws.send(message.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap();
        assert_eq!(got.unwrap().unwrap(), message);
    }
    assert_eq!(tunnels(&levee).tunnels.open(), 1);
    ws.close(None).await.unwrap();
}
