//! Route rate limits end to end: 429 `rate-limited` with `Retry-After`
//! once a route's (or a client key's) bucket is empty, counted on the
//! route; other routes and other keys unaffected; reload applies new
//! limits and keeps unchanged ones. Rates are one token per 100 s, so no
//! bucket refills while a test runs, however slow the machine.

use std::net::SocketAddr;

use http::header::RETRY_AFTER;
use http::{Method, StatusCode};
use levee::Levee;
use levee_telemetry::ErrorReason;
use levee_testkit::Behavior;

use crate::common::*;

/// Route `limited` (`/limited`, with `RATE_LIMIT` as its table) and route
/// `free` (everything else), both to backend `app`.
const TWO_ROUTES: &str = r#"
[server]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
timeout = "5s"

[[route]]
name = "limited"
path_prefix = "/limited"
backend = "app"

[route.rate_limit]
requests_per_second = 0.01
RATE_LIMIT

[[route]]
name = "free"
path_prefix = "/"
backend = "app"
"#;

fn two_routes(rate_limit: &str, node: SocketAddr) -> levee_config::Config {
    test_config(&TWO_ROUTES.replace("RATE_LIMIT", rate_limit), &[&[node]])
}

async fn get_with_key(client: &HttpClient, levee: &Levee, key: Option<&str>) -> Got {
    let mut req = request(Method::GET, &url(levee, "/limited"));
    if let Some(key) = key {
        req.headers_mut().insert("x-api-key", key.parse().unwrap());
    }
    send(client, req, std::time::Duration::from_secs(10)).await
}

fn assert_limited(got: &Got) {
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.reason(), Some("rate-limited"));
    let secs: u64 = got.headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&secs), "Retry-After {secs}");
}

fn limited_count(levee: &Levee, route: &str) -> u64 {
    let topo = levee.telemetry.topology();
    let stats = topo.routes.iter().find(|r| r.name == route).unwrap();
    stats.outcomes.reason(ErrorReason::RateLimited)
}

#[tokio::test]
async fn past_the_burst_a_route_answers_429_and_other_routes_are_unaffected() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let levee = Levee::start(two_routes("burst = 3", app.addr()))
        .await
        .unwrap();
    let client = client();
    for i in 0..3 {
        let got = get(&client, &url(&levee, "/limited")).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "request {i}: {:?}",
            got.reason()
        );
    }
    for _ in 0..2 {
        assert_limited(&get(&client, &url(&levee, "/limited")).await);
    }
    for i in 0..10 {
        let got = get(&client, &url(&levee, "/other")).await;
        assert_eq!(got.status, StatusCode::OK, "free request {i}");
    }
    assert_eq!(
        app.stats().requests,
        13,
        "refused requests never reach a node"
    );
    assert_eq!(limited_count(&levee, "limited"), 2);
    assert_eq!(limited_count(&levee, "free"), 0);
    assert!(metrics_text(&client, &levee).await.contains("rate-limited"));
}

#[tokio::test]
async fn a_header_key_gives_each_api_key_its_own_bucket() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let levee = Levee::start(two_routes(
        "burst = 2\nkey = \"header:x-api-key\"",
        app.addr(),
    ))
    .await
    .unwrap();
    let client = client();
    for key in [Some("alpha"), Some("beta"), None] {
        for i in 0..2 {
            let got = get_with_key(&client, &levee, key).await;
            assert_eq!(got.status, StatusCode::OK, "{key:?} request {i}");
        }
        // Requests without the header share one bucket of their own.
        assert_limited(&get_with_key(&client, &levee, key).await);
    }
    assert_limited(&get_with_key(&client, &levee, Some("alpha")).await);
    assert_eq!(limited_count(&levee, "limited"), 4);

    // /status shows the limit and the keys it tracks: alpha, beta and the
    // requests without the header; /metrics the same count.
    let status = status_json(&client, &levee).await;
    let rl = &status["routes"][0]["rate_limit"];
    assert_eq!(rl["requests_per_second"], 0.01, "{rl}");
    assert_eq!(rl["burst"], 2);
    assert_eq!(rl["key"], "header:x-api-key");
    assert_eq!(rl["max_keys"], 100_000);
    assert_eq!(rl["tracked_keys"], 3);
    assert_eq!(status["routes"][0]["errors"]["rate-limited"], 4);
    assert!(status["routes"][1]["rate_limit"].is_null());
    let m = metrics_text(&client, &levee).await;
    assert!(
        m.contains("levee_route_rate_limit_keys{route=\"limited\"} 3"),
        "{m}"
    );
}

#[tokio::test]
async fn a_reload_applies_a_changed_limit_and_keeps_an_unchanged_one() {
    let app = node(Behavior::Healthy { body_bytes: 2 }).await;
    let mut levee = Levee::start(two_routes("burst = 2", app.addr()))
        .await
        .unwrap();
    let client = client();
    for _ in 0..2 {
        assert_eq!(
            get(&client, &url(&levee, "/limited")).await.status,
            StatusCode::OK
        );
    }
    assert_limited(&get(&client, &url(&levee, "/limited")).await);

    // The same limit: the bucket stays empty.
    levee
        .reload(two_routes("burst = 2", app.addr()))
        .await
        .unwrap();
    assert_limited(&get(&client, &url(&levee, "/limited")).await);

    // A new limit: new, full buckets.
    levee
        .reload(two_routes("burst = 4", app.addr()))
        .await
        .unwrap();
    for i in 0..4 {
        let got = get(&client, &url(&levee, "/limited")).await;
        assert_eq!(got.status, StatusCode::OK, "request {i} after the reload");
    }
    assert_limited(&get(&client, &url(&levee, "/limited")).await);
    assert_eq!(
        limited_count(&levee, "limited"),
        3,
        "counted across reloads"
    );
    let rl = &status_json(&client, &levee).await["routes"][0]["rate_limit"];
    assert_eq!(rl["burst"], 4, "/status shows the new limit: {rl}");
    assert_eq!(rl["key"], "route");
    assert!(rl["max_keys"].is_null(), "one bucket: {rl}");
    assert_eq!(rl["tracked_keys"], 0);
}
