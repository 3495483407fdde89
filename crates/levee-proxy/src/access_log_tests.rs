#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;

use serde_json::Value;

use super::*;

fn line() -> Line<'static> {
    Line {
        at: UNIX_EPOCH + Duration::from_millis(1_764_586_423_123),
        request_id: b"id-\"1\"",
        client: "127.0.0.1:5555".parse().unwrap(),
        method: Some("GET"),
        host: Some(b"ex\"ample\\.com\x01\xff"),
        path: Some("/a\"b\\c\u{1}\u{7f}\n/é"),
        version: Some(Version::HTTP_11),
        status: 502,
        route: Some("api"),
        backend: Some("app"),
        node: Some("127.0.0.1:9001"),
        attempts: 2,
        error: Some("upstream-connect"),
        class: Some("safe"),
        bytes_in: Some(12),
        bytes_out: 345,
        duration: Some(Duration::from_micros(12_345)),
        upstream: Some(Duration::from_micros(7)),
        complete: true,
    }
}

fn parse(line: &Line<'_>) -> Value {
    let mut out = Vec::new();
    line.write(&mut out);
    assert_eq!(out.last(), Some(&b'\n'), "one line");
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    serde_json::from_slice(&out).expect("valid JSON")
}

#[test]
fn line_has_every_field_with_strings_escaped() {
    let v = parse(&line());
    assert_eq!(v["time"], "2025-12-01T10:53:43.123Z");
    assert_eq!(v["request_id"], "id-\"1\"");
    assert_eq!(v["client"], "127.0.0.1:5555");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "ex\"ample\\.com\u{1}\u{fffd}");
    assert_eq!(v["path"], "/a\"b\\c\u{1}\u{7f}\n/é");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["status"], 502);
    assert_eq!(v["route"], "api");
    assert_eq!(v["backend"], "app");
    assert_eq!(v["node"], "127.0.0.1:9001");
    assert_eq!(v["attempts"], 2);
    assert_eq!(v["error"], "upstream-connect");
    assert_eq!(v["breaker_class"], "safe");
    assert_eq!(v["bytes_in"], 12);
    assert_eq!(v["bytes_out"], 345);
    assert_eq!(v["duration_ms"], 12.345);
    assert_eq!(v["upstream_ms"], 0.007);
    assert_eq!(v["complete"], true);
    assert_eq!(v.as_object().unwrap().len(), 19, "no other field");
}

#[test]
fn absent_fields_are_null() {
    let v = parse(&Line {
        route: None,
        backend: None,
        node: None,
        error: None,
        class: None,
        bytes_in: None,
        upstream: None,
        complete: false,
        version: Some(Version::HTTP_2),
        ..line()
    });
    for key in [
        "route",
        "backend",
        "node",
        "error",
        "breaker_class",
        "bytes_in",
        "upstream_ms",
    ] {
        assert!(v[key].is_null(), "{key}: {}", v[key]);
    }
    assert_eq!(v["version"], "HTTP/2");
    assert_eq!(v["complete"], false);
}

#[test]
fn time_is_rfc3339_utc_with_millis() {
    let at = |secs: u64, ms: u64| {
        let mut out = Vec::new();
        rfc3339_ms(
            UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    };
    assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
    assert_eq!(at(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
    assert_eq!(at(1_709_251_200, 7), "2024-03-01T00:00:00.007Z");
}

/// A writer shared with the test.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// Waits (bounded) until `n` lines have been written.
    fn wait_for(&self, n: usize) {
        for _ in 0..500 {
            if self.lines() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{} lines written, waited for {n}", self.lines());
    }
}

#[test]
fn a_lone_line_is_flushed_without_more_traffic() {
    let sink = Sink::default();
    let writer = sink.clone();
    let log = AccessLog::start(&AccessTarget::Stdout, 4, Arc::default(), move || {
        Ok(writer.clone())
    })
    .unwrap();
    log.send(b"one\n".to_vec());
    // Flushed after FLUSH_EVERY of quiet; the log stays open meanwhile.
    sink.wait_for(1);
    assert_eq!(&*sink.0.lock().unwrap(), b"one\n");
}

/// Blocks in `write` until the test lets it go, and says when it got there.
struct Stalled {
    entered: std_mpsc::Sender<()>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
    out: Sink,
}

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let (entered, entered_rx) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let release_rx = Arc::new(Mutex::new(release_rx));
    let out = Sink::default();
    let dropped = Arc::new(AtomicU64::new(0));
    let stalled = Stalled {
        entered,
        release: release_rx,
        out: out.clone(),
    };
    let mut stalled = Some(stalled);
    let log = AccessLog::start(&AccessTarget::Stdout, 2, Arc::clone(&dropped), move || {
        stalled
            .take()
            .ok_or_else(|| io::Error::other("opened once"))
    })
    .unwrap();
    // A line bigger than the writer's buffer goes straight to the stalled
    // writer: the thread is now stuck, having taken it off the queue.
    log.send(vec![b'x'; 128 * 1024]);
    entered_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the writer took the first line");
    for _ in 0..2 + 5 {
        log.send(b"line\n".to_vec());
    }
    assert_eq!(
        dropped.load(Ordering::Relaxed),
        5,
        "two queued, five dropped"
    );
    // Let every write through: the queued lines follow the first.
    drop(release);
    out.wait_for(2);
    assert_eq!(dropped.load(Ordering::Relaxed), 5);
}

#[test]
fn a_refused_heads_request_line_gives_what_is_well_formed_and_whole() {
    let v11 = Some(Version::HTTP_11);
    let cases: [(&[u8], _); 9] = [
        (
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n",
            (Some("GET"), Some("/a"), v11),
        ),
        (
            b"\r\nPOST http://h:1/p/q?x HTTP/1.0\r\n",
            (Some("POST"), Some("/p/q"), Some(Version::HTTP_10)),
        ),
        (b"CONNECT h:443 HTTP/1.1\r\n", (Some("CONNECT"), None, v11)),
        (b"GET http://h HTTP/1.1\r\n", (Some("GET"), None, v11)),
        (
            b"GET /0123456789abcdef HTTP/1.1\r\n",
            (Some("GET"), None, v11),
        ),
        (b"GET /a HTTP/2\r\n", (Some("GET"), Some("/a"), None)),
        (b"GET /still-arriving", (Some("GET"), None, None)),
        (b"GET", (None, None, None)),
        (b"G(T /a HTTP/1.1\r\n", (None, Some("/a"), v11)),
    ];
    for (head, want) in cases {
        assert_eq!(
            request_line(head, 16),
            want,
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
}
