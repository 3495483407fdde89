//! levee's node connection pool seen from the node: one connection for
//! sequential requests, a burst's connections kept for the next burst, a
//! connection the node closed while idle costs no request, and a request
//! that reached the node is never sent again behind the retry layer's back.

use http::{Method, StatusCode};
use levee::Levee;
use levee_testkit::{AppNode, Behavior};

use crate::common::{client, get, node, request, send, start_levee, url};

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
workers = 1

[admin]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "2s"
timeout = "5s"

[[route]]
path_prefix = "/"
backend = "app"
"#;

async fn levee_for(app: &AppNode) -> Levee {
    start_levee(CONFIG, &[&[app.addr()]]).await
}

#[tokio::test]
async fn sequential_requests_reuse_one_node_connection() {
    let app = node(Behavior::Healthy { body_bytes: 64 }).await;
    let levee = levee_for(&app).await;
    let http = client();
    for i in 0..10 {
        let got = get(&http, &url(&levee, &format!("/r/{i}"))).await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body.len(), 64);
    }
    let stats = app.stats();
    assert_eq!(stats.requests, 10);
    assert_eq!(stats.connections, 1, "{stats:?}");
    levee.shutdown().await;
}

#[tokio::test]
async fn a_node_that_closed_its_idle_connections_costs_no_request() {
    let app = node(Behavior::Healthy { body_bytes: 16 }).await;
    let levee = levee_for(&app).await;
    let http = client();
    assert_eq!(get(&http, &url(&levee, "/a")).await.status, StatusCode::OK);
    // A restart: the node closes every open connection, levee's pooled one too.
    app.set_behavior(Behavior::Refuse).await.unwrap();
    app.set_behavior(Behavior::Healthy { body_bytes: 16 })
        .await
        .unwrap();
    let got = get(&http, &url(&levee, "/b")).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.reason());
    let stats = app.stats();
    assert_eq!(stats.requests, 2, "{stats:?}");
    assert_eq!(stats.connections, 2, "{stats:?}");
    levee.shutdown().await;
}

#[tokio::test]
async fn a_request_that_reached_the_node_is_sent_once() {
    let app = node(Behavior::Healthy { body_bytes: 16 }).await;
    let levee = levee_for(&app).await;
    let http = client();
    // Warm: the POST below goes over a reused connection.
    assert_eq!(get(&http, &url(&levee, "/a")).await.status, StatusCode::OK);
    app.set_behavior(Behavior::ResetMidHeaders).await.unwrap();
    let got = send(
        &http,
        request(Method::POST, &url(&levee, "/b")),
        std::time::Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert_eq!(got.reason(), Some("upstream-reset"));
    let stats = app.stats();
    assert_eq!(
        stats.requests, 2,
        "the POST reached the node once: {stats:?}"
    );
    assert_eq!(stats.connections, 1, "{stats:?}");
    levee.shutdown().await;
}

#[tokio::test]
async fn waves_of_concurrent_requests_reuse_the_connections_of_the_first() {
    const CONCURRENT: usize = 150;
    let app = node(Behavior::Slow {
        delay: std::time::Duration::from_millis(200),
        body_bytes: 16,
    })
    .await;
    let levee = levee_for(&app).await;
    let http = client();
    for wave in 0..3 {
        let calls: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let (http, url) = (http.clone(), url(&levee, &format!("/w{wave}/{i}")));
                tokio::spawn(async move {
                    send(
                        &http,
                        request(Method::GET, &url),
                        std::time::Duration::from_secs(20),
                    )
                    .await
                })
            })
            .collect();
        for call in calls {
            let got = call.await.unwrap();
            assert_eq!(got.status, StatusCode::OK, "{:?}", got.reason());
        }
    }
    let stats = app.stats();
    assert_eq!(stats.requests, 3 * CONCURRENT as u64, "{stats:?}");
    // More in flight at once than the old default of 64 idle per node...
    assert!(stats.peak_in_flight > 64, "{stats:?}");
    // ...and still the later waves found the first wave's connections.
    assert!(
        stats.connections <= CONCURRENT as u64,
        "a connection per request in flight, not per request: {stats:?}"
    );
    levee.shutdown().await;
}

#[tokio::test]
async fn answers_of_changing_sizes_come_whole_over_one_node_connection() {
    // levee's read room for a response head grows while answers fill it
    // and shrinks after small ones: every size must still arrive whole,
    // and the connection stay reusable.
    let app = node(Behavior::Healthy { body_bytes: 16_384 }).await;
    let levee = levee_for(&app).await;
    let http = client();
    let mut sent = 0;
    for (size, times) in [(16_384, 4), (100, 3), (200_000, 3), (16_384, 2), (0, 1)] {
        app.set_behavior(Behavior::Healthy { body_bytes: size })
            .await
            .unwrap();
        for i in 0..times {
            let got = get(&http, &url(&levee, &format!("/{size}/{i}"))).await;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{size} #{i}: {:?}",
                got.reason()
            );
            assert_eq!(got.body.len(), size, "{size} #{i}");
            sent += 1;
        }
    }
    let stats = app.stats();
    assert_eq!(stats.requests, sent);
    assert_eq!(stats.connections, 1, "{stats:?}");
    levee.shutdown().await;
}
