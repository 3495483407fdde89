//! Greedy and abusive clients against levee running as its own process, so
//! its resident memory and file descriptors are its own and not the test
//! binary's: a client that never reads a 50 MiB answer, and thousands of
//! connections dropped half-way through their requests.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use levee_testkit::{AppNode, Behavior};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const MIB: u64 = 1024 * 1024;

/// `levee run` on a config of its own, killed on drop.
struct Spawned {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Spawned {
    /// Starts levee with `toml` (its `[server]` and `[admin]` listen keys are
    /// added here) and waits until `/readyz` answers 200.
    async fn start(label: &str, toml: &str) -> Self {
        let dir = TempDir::new(label);
        let (proxy, admin) = (free_addr(), free_addr());
        let text = toml.replace(
            "[server]\n",
            &format!("[admin]\nlisten = \"{admin}\"\n\n[server]\nlisten = \"{proxy}\"\n"),
        );
        let path = dir.path("levee.toml");
        std::fs::write(&path, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["run", "--config", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let me = Self {
            child,
            proxy,
            admin,
            _dir: dir,
        };
        let c = client();
        let ready = format!("http://{admin}/readyz");
        for _ in 0..200 {
            if let Ok(Ok(resp)) =
                tokio::time::timeout(Duration::from_secs(1), c.get(ready.parse().unwrap())).await
            {
                if resp.status() == 200 {
                    return me;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("levee did not become ready");
    }

    fn proc_file(&self, name: &str) -> String {
        format!("/proc/{}/{name}", self.child.id())
    }

    /// Resident memory, from /proc/<pid>/status.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(self.proc_file("status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("a VmRSS line");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(self.proc_file("fd")).unwrap().count()
    }

    async fn status(&self) -> serde_json::Value {
        let got = get(&client(), &format!("http://{}/status", self.admin)).await;
        assert_eq!(got.status, 200);
        serde_json::from_slice(&got.body).unwrap()
    }

    /// Open client connections, and every slot held or queued in a bulkhead
    /// or on a node, from `/status`.
    async fn held(&self) -> (u64, u64) {
        let s = self.status().await;
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let mut slots = 0;
        for r in s["routes"].as_array().unwrap() {
            slots += n(&r["in_flight"]) + n(&r["queued"]);
        }
        for b in s["backends"].as_array().unwrap() {
            slots += n(&b["in_flight"]) + n(&b["queued"]);
            for node in b["nodes"].as_array().unwrap() {
                slots += n(&node["in_flight"]);
            }
        }
        (n(&s["connections_open"]), slots)
    }

    /// `held` once it is (0, 0), or after 10 s.
    async fn held_settled(&self) -> (u64, u64) {
        let mut held = self.held().await;
        for _ in 0..50 {
            if held == (0, 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            held = self.held().await;
        }
        held
    }

    async fn get_ok(&self, path: &str) {
        let got = get(&client(), &format!("http://{}{path}", self.proxy)).await;
        assert_eq!(got.status, 200, "{got:?}");
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn one_backend(node: SocketAddr, extra: &str) -> String {
    format!(
        r#"[server]
workers = 2

[[backend]]
name = "app"
nodes = ["{node}"]
timeout = "30s"
max_in_flight = 4096
{extra}

[[route]]
path_prefix = "/"
backend = "app"
"#
    )
}

/// The node's response bytes once they stop growing for a second.
async fn settled_bytes_sent(app: &AppNode) -> u64 {
    let mut last = app.stats().body_bytes_sent;
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = app.stats().body_bytes_sent;
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 5 {
            return now;
        }
    }
    panic!("the node kept sending for 20 s: {last} bytes");
}

#[tokio::test]
async fn a_client_that_never_reads_holds_back_the_node_not_levee_s_memory() {
    const BODY: u64 = 50 * MIB;
    let app = node(Behavior::default()).await;
    let levee = Spawned::start("non-reading", &one_backend(app.addr(), "")).await;
    levee.get_ok("/warm-up").await;
    app.set_behavior(Behavior::Healthy {
        body_bytes: usize::try_from(BODY).unwrap(),
    })
    .await
    .unwrap();
    let sent_before = app.stats().body_bytes_sent;
    let rss_before = levee.rss_bytes();

    // A small receive window, so the kernel holds little on the client's side.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut reader = socket.connect(levee.proxy).await.unwrap();
    reader
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let held_back = settled_bytes_sent(&app).await - sent_before;
    let rss_while = levee.rss_bytes();
    let grew = rss_while.saturating_sub(rss_before);
    eprintln!(
        "node sent {} KiB of {} KiB; levee RSS {} KiB -> {} KiB",
        held_back / 1024,
        BODY / 1024,
        rss_before / 1024,
        rss_while / 1024
    );
    assert!(
        held_back < BODY / 2,
        "back-pressure reached the node: it sent {held_back} bytes"
    );
    assert!(grew < 16 * MIB, "levee's RSS grew by {grew} bytes");
    // Meanwhile everyone else is served.
    levee.get_ok("/other").await;

    // Once the client reads, the whole answer arrives.
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let read_all = async {
        while total < BODY {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {total} bytes");
            total += n as u64;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the body within 60 s");
    assert!(total >= BODY);
}

/// One connection given up half-way: `kind` 0 mid-head, 1 mid-body, 2 after
/// its head, before the answer.
async fn give_up(addr: SocketAddr, kind: usize) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = match kind {
        0 => {
            s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Half: ")
                .await
        }
        1 => {
            let mut req =
                b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".to_vec();
            req.extend_from_slice(&[b'a'; 500]);
            s.write_all(&req).await
        }
        _ => s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await,
    };
    if kind != 0 {
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    drop(s);
}

#[tokio::test]
async fn thousands_of_abandoned_requests_leak_no_slot_or_descriptor() {
    const CONNECTIONS: usize = 3000;
    const AT_ONCE: usize = 50;
    let app = node(Behavior::Slow {
        delay: Duration::from_millis(300),
        body_bytes: 2,
    })
    .await;
    // Idle node connections close soon, so the count can come back.
    let levee = Spawned::start(
        "churn",
        &one_backend(app.addr(), "pool_idle_timeout = \"500ms\""),
    )
    .await;
    levee.get_ok("/warm-up").await;
    assert!(
        eventually(Duration::from_secs(10), || app.stats().open_connections
            == 0)
        .await,
        "the warm-up node connection idles out"
    );
    assert_eq!(levee.held_settled().await, (0, 0));
    let fds_before = levee.fds();

    let started = tokio::time::Instant::now();
    let churn = async {
        for batch in 0..CONNECTIONS / AT_ONCE {
            let tasks: Vec<_> = (0..AT_ONCE)
                .map(|i| tokio::spawn(give_up(levee.proxy, (batch * AT_ONCE + i) % 3)))
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), churn)
        .await
        .expect("the churn within 120 s");
    let churned_in = started.elapsed();
    assert!(app.stats().requests > 0, "some requests reached the node");

    // Everything comes back, within a bounded wait.
    let held = levee.held_settled().await;
    let mut fds = levee.fds();
    for _ in 0..50 {
        if fds <= fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds = levee.fds();
    }
    let after = (fds, held);
    eprintln!(
        "{CONNECTIONS} connections in {churned_in:?}; fds {fds_before} -> {}; \
         (connections, slots) after: {:?}",
        after.0, after.1
    );
    assert_eq!(after.1, (0, 0), "(open connections, held slots)");
    assert!(after.0 <= fds_before, "fds {fds_before} -> {}", after.0);
    levee.get_ok("/after").await;
}
