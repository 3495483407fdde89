//! Responses a node gets wrong: each is 502 `upstream-protocol`, the node
//! connection is closed (never reused), and the failure counts on the node
//! and its breaker.

use http::StatusCode;
use levee_testkit::RawNode;

use crate::common::*;

/// A head of `lines` header lines of `each` bytes.
fn big_head(lines: usize, each: usize) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
    for i in 0..lines {
        head.extend_from_slice(format!("x-h{i}: {}\r\n", "a".repeat(each)).as_bytes());
    }
    head.extend_from_slice(b"\r\nok");
    head
}

fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("garbage status line", b"NOT HTTP AT ALL\r\n\r\n".to_vec()),
        ("status not a number", b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
        (
            "differing Content-Length lines",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!".to_vec(),
        ),
        (
            "a Content-Length list that differs",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok!".to_vec(),
        ),
        (
            "Content-Length with Transfer-Encoding",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                .to_vec(),
        ),
        ("a head of 1 MiB", big_head(16, 64 * 1024)),
        ("more than 100 header lines", big_head(120, 8)),
    ]
}

#[tokio::test]
async fn broken_responses_are_502_upstream_protocol_and_blamed_on_the_node() {
    for (what, answer) in cases() {
        let raw = RawNode::start(answer).await.unwrap();
        let levee = start_levee(ONE_ROUTE, &[&[raw.addr()]]).await;
        let client = client();
        for _ in 0..3 {
            let got = get(&client, &url(&levee, "/")).await;
            assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{what}: {got:?}");
            assert_eq!(got.reason(), Some("upstream-protocol"), "{what}: {got:?}");
        }
        // Never a second request on a connection that broke the protocol.
        assert!(
            eventually(std::time::Duration::from_secs(5), || raw
                .stats()
                .closed_by_client
                == 3)
            .await,
            "{what}: {:?}",
            raw.stats()
        );
        let stats = raw.stats();
        assert_eq!(
            (stats.requests, stats.reused, stats.connections),
            (3, 0, 3),
            "{what}"
        );
        // Counted on the node, where its breaker judges it.
        let status = status_json(&client, &levee).await;
        let node = &status["backends"][0]["nodes"][0];
        assert_eq!(node["errors"]["upstream-protocol"], 3, "{what}: {node}");
        let breaker = &node["breakers"][0];
        assert_eq!(breaker["window"]["failures"], 3, "{what}: {breaker}");
        levee.shutdown().await;
    }
}
