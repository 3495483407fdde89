//! The `levee-node` binary: its mode switched while it runs, through its
//! control port, and never through the port the traffic uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Bound on a connect, a read or a write; and on waiting for the node.
const PATIENCE: Duration = Duration::from_secs(10);

fn free() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request with `Connection: close`: status and body, or
/// `None` if nothing could be reached or read.
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, PATIENCE).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    s.set_write_timeout(Some(PATIENCE)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// The child process, killed if the test fails before it exits.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_control_port_switches_a_running_nodes_mode() {
    let (listen, control) = (free(), free());
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_levee-node"))
            .args(["--listen", &listen.to_string(), "--name", "n3"])
            .args(["--mode", "status:503", "--control", &control.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + PATIENCE;
    while call(control, "GET", "/mode", "").is_none() {
        assert!(Instant::now() < until, "the control port answers");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mode = |what: &str| {
        let (code, body) = call(control, "GET", "/mode", "").unwrap();
        assert_eq!(code, 200, "{what}: {body}");
        body.trim().to_owned()
    };
    assert_eq!(mode("start"), "status:503:1");
    assert_eq!(call(listen, "GET", "/", "").unwrap().0, 503);

    // The node's own port serves traffic only: /mode there is an ordinary
    // request, whatever its method and body.
    assert_eq!(call(listen, "PUT", "/mode", "healthy").unwrap().0, 503);
    assert_eq!(mode("after a PUT to the node's port"), "status:503:1");

    let put = |body: &str| call(control, "PUT", "/mode", body).unwrap();
    assert_eq!(put("healthy:3\n"), (200, "healthy:3\n".to_owned()));
    let (code, body) = call(listen, "GET", "/", "").unwrap();
    assert_eq!((code, body.len()), (200, 3), "{body}");

    // Refuse closes the node's port; only the control port can reopen it.
    assert_eq!(put("refuse").0, 200);
    assert!(
        TcpStream::connect_timeout(&listen, PATIENCE).is_err(),
        "refused"
    );
    assert_eq!(put("status:500:1:POST").0, 200);
    assert_eq!(call(listen, "GET", "/", "").unwrap().0, 200);
    assert_eq!(call(listen, "POST", "/", "").unwrap().0, 500);

    let (code, body) = put("sometimes");
    assert_eq!(code, 400);
    assert!(body.contains("unknown mode"), "{body}");
    assert_eq!(mode("after a bad PUT"), "status:500:1:POST");
    assert_eq!(call(control, "DELETE", "/mode", "").unwrap().0, 405);
    assert_eq!(call(control, "GET", "/", "").unwrap().0, 404);

    let term = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let until = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "levee-node exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
