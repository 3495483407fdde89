//! The isolated admin listener: health, readiness, status, metrics.

use std::time::Duration;

use http::StatusCode;
use levee_testkit::Behavior;

use crate::common::*;

#[tokio::test]
async fn endpoints_answer_and_metrics_exist_at_zero_from_startup() {
    let app = node(Behavior::Healthy { body_bytes: 1 }).await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let client = client();

    let health = get(&client, &admin_url(&levee, "/healthz")).await;
    assert_eq!(health.status, StatusCode::OK, "{:?}", health.body);

    let ready = get(&client, &admin_url(&levee, "/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&ready.body).to_string();
    assert!(text.contains("backend app: 1/1 nodes usable"), "{text}");

    // Before any traffic: every series is there, at 0.
    let metrics = get(&client, &admin_url(&levee, "/metrics")).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let m = String::from_utf8_lossy(&metrics.body).to_string();
    let node = app.addr().to_string();
    for line in [
        "levee_requests_total{route=\"all\",backend=\"app\",class=\"5xx\"} 0".to_string(),
        "levee_errors_total{route=\"all\",backend=\"app\",reason=\"bulkhead-full\"} 0".to_string(),
        "levee_errors_total{route=\"all\",backend=\"app\",reason=\"deadline\"} 0".to_string(),
        format!("levee_node_errors_total{{backend=\"app\",node=\"{node}\",reason=\"upstream-connect\"}} 0"),
        "levee_backend_in_flight{backend=\"app\"} 0".to_string(),
        "levee_route_queued{route=\"all\"} 0".to_string(),
        "levee_route_rate_limit_keys{route=\"all\"} 0".to_string(),
        "levee_request_duration_seconds_count{route=\"all\",backend=\"app\"} 0".to_string(),
        "levee_ready 1".to_string(),
    ] {
        assert!(m.contains(&line), "missing `{line}` in:\n{m}");
    }

    assert_eq!(
        get(&client, &url(&levee, "/x")).await.status,
        StatusCode::OK
    );
    let m = String::from_utf8_lossy(&get(&client, &admin_url(&levee, "/metrics")).await.body)
        .to_string();
    assert!(
        m.contains("levee_requests_total{route=\"all\",backend=\"app\",class=\"2xx\"} 1"),
        "{m}"
    );
    assert!(m.contains(&format!(
        "levee_node_requests_total{{backend=\"app\",node=\"{node}\",class=\"2xx\"}} 1"
    )));

    let status = get(&client, &admin_url(&levee, "/status")).await;
    let v: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(v["config_version"].as_str().unwrap().len(), 16);
    assert_eq!(v["ready"], true);
    let b = &v["backends"][0];
    assert_eq!(b["name"], "app");
    assert_eq!(b["in_flight"], 0);
    assert_eq!(b["queued"], 0);
    assert_eq!(b["nodes"][0]["addr"], node);
    assert_eq!(b["nodes"][0]["responses"]["2xx"], 1);
    assert_eq!(v["routes"][0]["responses"]["2xx"], 1);
    assert!(v["routes"][0]["rate_limit"].is_null(), "no rate limit");

    let missing = get(&client, &admin_url(&levee, "/nope")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    levee.shutdown().await;
}

#[tokio::test]
async fn readyz_says_draining_once_shutdown_begins() {
    let app = node(Behavior::Slow {
        delay: Duration::from_millis(800),
        body_bytes: 1,
    })
    .await;
    let levee = start_levee(ONE_ROUTE, &[&[app.addr()]]).await;
    let client = client();
    let admin = admin_url(&levee, "/readyz");
    let telemetry = std::sync::Arc::clone(&levee.telemetry);
    // Keep a request in flight so the drain takes a while.
    let inflight = {
        let client = client.clone();
        let u = url(&levee, "/");
        tokio::spawn(async move { get(&client, &u).await })
    };
    assert!(eventually(Duration::from_secs(2), || slots_held(&levee) == 1).await);
    let stopping = tokio::spawn(levee.shutdown());
    assert!(eventually(Duration::from_secs(2), || telemetry.is_draining()).await);
    let ready = get(&client, &admin).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&ready.body).contains("draining"));
    assert_eq!(inflight.await.unwrap().status, StatusCode::OK);
    stopping.await.unwrap();
}

/// Two nodes, one failing: breakers that open after 3 failures in a row
/// and stay open for the test.
const ONE_FAILING: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1", "127.0.0.1:2"]
connect_timeout = "100ms"
timeout = "2s"
max_ejected_percent = 50
load_balancing = "round_robin"

[backend.breaker]
consecutive_failures = 3
open_for = "60s"
jitter = 0.0

[backend.retry]
max_retries = 0

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#;

/// `/` is the status page (HTML, no external assets), and `/status` says
/// why a node is out: its breaker's last move with the figures it saw.
#[tokio::test]
async fn the_status_page_is_served_and_status_explains_an_ejected_node() {
    let good = node(Behavior::Healthy { body_bytes: 1 }).await;
    let bad = node(Behavior::Status {
        code: 500,
        share: 1.0,
        methods: None,
    })
    .await;
    let levee = start_levee(ONE_FAILING, &[&[good.addr(), bad.addr()]]).await;
    let client = client();

    let page = get(&client, &admin_url(&levee, "/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.headers["content-type"], "text/html; charset=utf-8",
        "{:?}",
        page.headers
    );
    let html = String::from_utf8_lossy(&page.body);
    assert!(html.contains("<title>levee status</title>"), "{html}");
    assert!(html.contains("fetch(\"status\""), "it polls /status");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src="),
        "no external assets"
    );

    for _ in 0..12 {
        get(&client, &url(&levee, "/x")).await;
    }
    let v = status_json(&client, &levee).await;
    assert!(v["heartbeat_stale_after_ms"].as_u64().unwrap() > 0, "{v}");
    let nodes = v["backends"][0]["nodes"].as_array().unwrap();
    let out = nodes
        .iter()
        .find(|n| n["addr"] == bad.addr().to_string())
        .unwrap();
    assert_eq!(out["state"], "partly-ejected", "{out}");
    let safe = &out["breakers"][0];
    assert_eq!(safe["state"], "open", "{out}");
    let last = &safe["last_move"];
    assert_eq!(last["from"], "closed", "{last}");
    assert_eq!(last["to"], "open", "{last}");
    assert_eq!(last["reason"], "consecutive-failures", "{last}");
    assert_eq!(last["consecutive_failures"], 3, "{last}");
    assert!(last["window"]["failures"].as_u64().unwrap() >= 3, "{last}");
    assert_eq!(last["open_for_ms"], 60_000, "{last}");
    assert!(last["ago_ms"].as_u64().unwrap() < 10_000, "{last}");
    let kept = nodes
        .iter()
        .find(|n| n["addr"] == good.addr().to_string())
        .unwrap();
    assert_eq!(kept["state"], "active", "{kept}");
    assert_eq!(kept["breakers"][0]["last_move"], serde_json::Value::Null);
    levee.shutdown().await;
}
