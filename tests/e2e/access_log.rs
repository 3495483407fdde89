//! The access log: one JSON line per request, in the file `log.access`
//! names, moved by a reload.

use std::path::Path;
use std::time::Duration;

use http::StatusCode;
use levee_testkit::Behavior;
use serde_json::Value;

use crate::common::*;

fn config(access: &Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[log]
access = "{}"
format = "json"

[[backend]]
name = "app"
nodes = ["127.0.0.1:1"]
connect_timeout = "500ms"
timeout = "5s"

[[backend]]
name = "down"
nodes = ["127.0.0.1:1"]
connect_timeout = "500ms"
timeout = "5s"

[[route]]
name = "ok"
path_prefix = "/ok"
backend = "app"

[[route]]
name = "bad"
path_prefix = "/bad"
backend = "down"
"#,
        access.display()
    )
}

/// The file's lines, parsed (none if it does not exist yet).
fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn by_path<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("no line for {path} in {lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_a_line_with_its_fields_and_a_reload_moves_the_log() {
    let dir = TempDir::new("access-log");
    let (first, second) = (dir.path("first.log"), dir.path("second.log"));
    let ok = node(Behavior::Healthy { body_bytes: 5 }).await;
    let down = node(Behavior::Refuse).await;
    let mut levee = start_levee(&config(&first), &[&[ok.addr()], &[down.addr()]]).await;
    let client = client();

    let got = get(&client, &url(&levee, "/ok/a%22b?secret=1")).await;
    assert_eq!(got.status, StatusCode::OK);
    let id = got.headers["x-request-id"].to_str().unwrap().to_owned();
    let missing = get(&client, &url(&levee, "/nowhere")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = get(&client, &url(&levee, "/bad")).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY);
    assert_eq!(bad.reason(), Some("upstream-connect"));

    assert!(
        eventually(Duration::from_secs(10), || lines(&first).len() >= 3).await,
        "three lines: {:?}",
        lines(&first)
    );
    let all = lines(&first);
    assert_eq!(all.len(), 3, "{all:?}");

    let line = by_path(&all, "/ok/a%22b");
    assert_eq!(line["request_id"], id.as_str());
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], levee.proxy_addr.to_string().as_str());
    assert_eq!(line["version"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "ok");
    assert_eq!(line["backend"], "app");
    assert_eq!(line["node"], ok.addr().to_string().as_str());
    assert_eq!(line["attempts"], 1);
    assert!(line["error"].is_null());
    assert_eq!(line["breaker_class"], "safe");
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["bytes_out"], got.body.len());
    assert!(line["duration_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());
    assert_eq!(line["complete"], true);

    let line = by_path(&all, "/nowhere");
    assert_eq!(line["status"], 404);
    assert_eq!(line["error"], "no-route");
    assert!(line["route"].is_null() && line["node"].is_null(), "{line}");
    assert_eq!(line["attempts"], 0);
    assert_eq!(line["bytes_out"], missing.body.len());

    let line = by_path(&all, "/bad");
    assert_eq!(line["status"], 502);
    assert_eq!(line["error"], "upstream-connect");
    assert_eq!(line["route"], "bad");
    assert_eq!(line["backend"], "down");
    assert_eq!(line["node"], down.addr().to_string().as_str());
    assert_eq!(line["attempts"], 1);
    assert!(line["upstream_ms"].is_null(), "no response headers: {line}");

    // A reload to another file: new lines go there, the old file stays.
    levee
        .reload(test_config(
            &config(&second),
            &[&[ok.addr()], &[down.addr()]],
        ))
        .await
        .unwrap();
    assert_eq!(
        get(&client, &url(&levee, "/ok/after")).await.status,
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(10), || lines(&second).len() == 1).await,
        "a line in the new file: {:?}",
        lines(&second)
    );
    assert_eq!(by_path(&lines(&second), "/ok/after")["status"], 200);
    assert_eq!(lines(&first).len(), 3, "the old file gets no more lines");

    let metrics = metrics_text(&client, &levee).await;
    assert!(
        metrics.contains("levee_access_log_dropped_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_unwritable_access_log_refuses_the_reload() {
    let dir = TempDir::new("access-log-refused");
    let ok = node(Behavior::Healthy { body_bytes: 2 }).await;
    let nodes: &[&[std::net::SocketAddr]] = &[&[ok.addr()], &[ok.addr()]];
    let mut levee = start_levee(&config(&dir.path("a.log")), nodes).await;
    let nowhere = dir.path("no-such-dir").join("access.log");
    let e = levee
        .reload(test_config(&config(&nowhere), nodes))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("log.access"), "{e}");
    let client = client();
    assert_eq!(
        get(&client, &url(&levee, "/ok")).await.status,
        StatusCode::OK
    );
    assert!(
        eventually(Duration::from_secs(10), || lines(&dir.path("a.log")).len()
            == 1)
        .await,
        "the old log stays live"
    );
}
