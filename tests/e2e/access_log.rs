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

/// Sends `head` on a connection of its own and reads levee's answer to the
/// end (the gate closes after a refusal), bounded in time.
async fn raw_answer(levee: &levee::Levee, head: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(levee.proxy_addr)
        .await
        .unwrap();
    s.write_all(head).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "levee answers and closes");
    String::from_utf8_lossy(&out).into_owned()
}

/// Requests the HTTP/1 gate refuses before hyper parses them get a line
/// too: status, reason, client, what could be read of the request line,
/// and the answer's body bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_gate_refuses_get_a_line() {
    let dir = TempDir::new("access-log-gate");
    let log = dir.path("access.log");
    let ok = node(Behavior::Healthy { body_bytes: 2 }).await;
    let levee = start_levee(&config(&log), &[&[ok.addr()], &[ok.addr()]]).await;

    let folded = raw_answer(
        &levee,
        b"POST /ok/form?token=secret HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n folded\r\n\r\n",
    )
    .await;
    assert!(folded.starts_with("HTTP/1.1 400 "), "{folded}");
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
    let long = raw_answer(&levee, long_target.as_bytes()).await;
    assert!(long.starts_with("HTTP/1.1 414 "), "{long}");
    let gzip = raw_answer(
        &levee,
        b"PUT http://a/ok/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .await;
    assert!(gzip.starts_with("HTTP/1.1 501 "), "{gzip}");
    let garbage = raw_answer(&levee, b"\x01\x02 nonsense\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");

    assert!(
        eventually(Duration::from_secs(10), || lines(&log).len() >= 4).await,
        "four lines: {:?}",
        lines(&log)
    );
    let written = lines(&log);
    assert_eq!(written.len(), 4, "{written:?}");
    let body_len = |answer: &str| answer.split_once("\r\n\r\n").unwrap().1.len();
    let id = |answer: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap()
            .to_owned()
    };
    // Lines come in the order connections ended, not requests were sent:
    // each answer's line is found by its request id.
    let answers = [&folded, &long, &gzip, &garbage];
    let all: Vec<Value> = answers
        .iter()
        .map(|answer| {
            let id = id(answer);
            written
                .iter()
                .find(|line| line["request_id"] == id.as_str())
                .unwrap_or_else(|| panic!("no line for {id}: {written:?}"))
                .clone()
        })
        .collect();
    for (line, answer) in all.iter().zip(answers) {
        assert!(
            line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
        assert_eq!(line["request_id"], id(answer).as_str(), "{line}");
        assert_eq!(line["bytes_out"], body_len(answer), "{line}");
        assert_eq!(line["complete"], true, "{line}");
        assert_eq!(line["attempts"], 0, "{line}");
        assert!(line["route"].is_null() && line["node"].is_null(), "{line}");
        assert!(
            line["host"].is_null() && line["duration_ms"].is_null(),
            "{line}"
        );
        assert!(line["bytes_in"].is_null(), "{line}");
    }
    let line = &all[0];
    assert_eq!(
        (&line["status"], &line["error"]),
        (&Value::from(400), &Value::from("bad-request"))
    );
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/ok/form", "without its query");
    assert_eq!(line["version"], "HTTP/1.1");
    let line = &all[1];
    assert_eq!(line["status"], 414);
    assert_eq!(line["error"], "uri-too-long");
    assert_eq!(line["method"], "GET");
    assert!(
        line["path"].is_null(),
        "a target over max_uri_bytes is not logged: {line}"
    );
    let line = &all[2];
    assert_eq!(line["status"], 501);
    assert_eq!(line["error"], "unsupported-transfer-encoding");
    assert_eq!(line["method"], "PUT");
    assert_eq!(line["path"], "/ok/x", "an absolute-form target's path");
    let line = &all[3];
    assert_eq!(line["status"], 400);
    assert!(
        line["method"].is_null() && line["path"].is_null() && line["version"].is_null(),
        "{line}"
    );
}
