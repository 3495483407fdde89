//! `Tunnel`: which upgrades are WebSocket handshakes, the route's tunnel
//! cap, and a declined handshake giving its tunnel slot back.

use std::sync::Arc;

use http::{Method, Response, Version};
use levee_telemetry::ErrorReason;
use tokio::sync::Notify;
use tower::{service_fn, Layer, Service, ServiceExt};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::stack::tunnel::{handshake_of, TunnelLayer};
use crate::stack::{testing, Routed};

const HANDSHAKE: [(&str, &str); 4] = [
    ("connection", "keep-alive, Upgrade"),
    ("upgrade", "WebSocket"),
    ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("sec-websocket-version", "13"),
];

async fn classify(
    method: Method,
    headers: &[(&str, &str)],
    version: Version,
) -> Result<bool, ProxyError> {
    let mut req = testing::client_request_with(method, "/ws", headers, "").await;
    *req.version_mut() = version;
    handshake_of(&req)
}

#[tokio::test]
async fn only_a_get_asking_for_websocket_alone_is_a_handshake() {
    assert!(classify(Method::GET, &HANDSHAKE, Version::HTTP_11)
        .await
        .unwrap());
    let versioned = [("connection", "upgrade"), ("upgrade", "websocket/13")];
    assert!(classify(Method::GET, &versioned, Version::HTTP_11)
        .await
        .unwrap());

    // Ignored (stripped later with the hop-by-hop headers).
    let h2c = [
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
    ];
    assert!(!classify(Method::GET, &h2c, Version::HTTP_11).await.unwrap());
    let no_connection = [("upgrade", "websocket")];
    assert!(!classify(Method::GET, &no_connection, Version::HTTP_11)
        .await
        .unwrap());
    assert!(!classify(Method::GET, &HANDSHAKE, Version::HTTP_10)
        .await
        .unwrap());
    assert!(!classify(Method::GET, &[], Version::HTTP_11).await.unwrap());

    // Refused.
    let e = classify(Method::POST, &HANDSHAKE, Version::HTTP_11)
        .await
        .unwrap_err();
    assert_eq!(e.reason, ErrorReason::BadUpgrade);
    let both = [("connection", "upgrade"), ("upgrade", "h2c, websocket")];
    let e = classify(Method::GET, &both, Version::HTTP_11)
        .await
        .unwrap_err();
    assert_eq!(e.reason, ErrorReason::BadUpgrade);
}

const CAPPED: &str = r#"
[[backend]]
name = "app"
nodes = ["127.0.0.1:9001"]
[[route]]
name = "chat"
path_prefix = "/"
backend = "app"
max_tunnels = 1
"#;

#[tokio::test]
async fn a_handshake_over_the_cap_is_refused_and_a_declined_one_gives_its_slot_back() {
    let state = testing::state(CAPPED);
    let tunnels = &state.routes[0].stats.tunnels;
    let answered = |status: u16| {
        service_fn(move |_req: Routed| async move {
            Ok::<Response<ProxyBody>, ProxyError>(testing::local_response(status, "node"))
        })
    };
    let handshake = || async {
        let req = testing::client_request_with(Method::GET, "/ws", &HANDSHAKE, "").await;
        let mut routed = testing::routed(&state, req);
        routed.websocket = true;
        routed
    };

    // The node declines: its answer passes, the slot is given back.
    let mut declining = TunnelLayer.layer(answered(403));
    let resp = declining
        .ready()
        .await
        .unwrap()
        .call(handshake().await)
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(tunnels.open(), 0);

    // While one handshake is waiting on its node, the next is over the cap.
    let go = Arc::new(Notify::new());
    let wait = Arc::clone(&go);
    let mut slow = TunnelLayer.layer(service_fn(move |_req: Routed| {
        let wait = Arc::clone(&wait);
        async move {
            wait.notified().await;
            Ok::<Response<ProxyBody>, ProxyError>(testing::local_response(200, "node"))
        }
    }));
    let pending = tokio::spawn(slow.ready().await.unwrap().call(handshake().await));
    assert!(testing_eventually(|| tunnels.open() == 1).await);
    let e = declining
        .ready()
        .await
        .unwrap()
        .call(handshake().await)
        .await
        .unwrap_err();
    assert_eq!(e.reason, ErrorReason::TunnelLimit);
    go.notify_one();
    assert_eq!(pending.await.unwrap().unwrap().status(), 200);
    assert_eq!(tunnels.open(), 0);

    // An ordinary request is not counted at all.
    let req = testing::client_request(Method::GET, "/plain", "").await;
    let resp = declining
        .ready()
        .await
        .unwrap()
        .call(testing::routed(&state, req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(tunnels.open(), 0);
}

#[tokio::test]
async fn a_101_without_an_upgraded_connection_or_handshake_is_a_bad_answer() {
    let state = testing::state(CAPPED);
    let mut switching = TunnelLayer.layer(service_fn(|_req: Routed| async {
        Ok::<Response<ProxyBody>, ProxyError>(testing::local_response(101, ""))
    }));
    let req = testing::client_request(Method::GET, "/plain", "").await;
    let e = switching
        .ready()
        .await
        .unwrap()
        .call(testing::routed(&state, req))
        .await
        .unwrap_err();
    assert_eq!(
        e.reason,
        ErrorReason::UpstreamProtocol,
        "nothing asked for it"
    );

    let req = testing::client_request_with(Method::GET, "/ws", &HANDSHAKE, "").await;
    let mut routed = testing::routed(&state, req);
    routed.websocket = true;
    let e = switching
        .ready()
        .await
        .unwrap()
        .call(routed)
        .await
        .unwrap_err();
    assert_eq!(
        e.reason,
        ErrorReason::UpstreamProtocol,
        "no node connection to splice"
    );
    assert_eq!(state.routes[0].stats.tunnels.open(), 0);
    assert_eq!(state.routes[0].stats.tunnels.opened_total(), 0);
}

/// Yields to the runtime until `check` holds (bounded: 100 yields).
async fn testing_eventually(check: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if check() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    check()
}
