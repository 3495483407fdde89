//! The access log: one JSON line per request, written when its response
//! body ends (or is cut, or dropped unfinished), so that bytes out and the
//! total duration are what the client got.
//!
//! The data plane never waits on it. A request formats its line (the one
//! allocation the log costs it) and offers it to a bounded channel; a
//! writer thread buffers lines and flushes when idle and at least every
//! [`FLUSH_EVERY`]. When the channel is full the line is dropped and
//! counted (`levee_access_log_dropped_total`). With the log off, a request
//! pays one `Option` check.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderValue, HOST};
use http::{Method, Request, Uri, Version};
use http_body::Body as _;
use levee_config::AccessTarget;
use levee_telemetry::ErrorReason;
use tokio::time::Instant;
use tracing::warn;

use crate::gate::is_tchar;
use crate::headers::X_REQUEST_ID;
use crate::nodes::NodeHot;
use crate::state::ProxyState;

/// Lines waiting for the writer; past this, lines are dropped.
pub const QUEUE_LINES: usize = 8192;

/// Longest a written line waits in the buffer before it is flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The live access log: where requests send their lines.
#[derive(Debug)]
pub struct AccessLog {
    target: AccessTarget,
    lines: SyncSender<Vec<u8>>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer for `target` (`None` for `off`). A file is opened
    /// (appended to, created if missing) here, so that a path that cannot
    /// be written is an error at start or reload, not lost lines.
    pub fn open(target: &AccessTarget, dropped: Arc<AtomicU64>) -> io::Result<Option<Arc<Self>>> {
        let log = match target {
            AccessTarget::Off => return Ok(None),
            AccessTarget::Stdout => Self::start(target, QUEUE_LINES, dropped, || Ok(io::stdout())),
            AccessTarget::File(path) => {
                let path = path.clone();
                let open = move || append(&path);
                open()?;
                Self::start(target, QUEUE_LINES, dropped, open)
            }
        }?;
        Ok(Some(Arc::new(log)))
    }

    /// Starts a writer thread that writes to what `open` returns, and calls
    /// it again on [`AccessLog::reopen`].
    fn start<W, F>(
        target: &AccessTarget,
        capacity: usize,
        dropped: Arc<AtomicU64>,
        mut open: F,
    ) -> io::Result<Self>
    where
        W: Write + Send + 'static,
        F: FnMut() -> io::Result<W> + Send + 'static,
    {
        let (lines, rx) = mpsc::sync_channel(capacity);
        let reopen = Arc::new(AtomicBool::new(false));
        let out = open()?;
        let writer = Writer {
            lines: rx,
            reopen: Arc::clone(&reopen),
            dropped: Arc::clone(&dropped),
        };
        std::thread::Builder::new()
            .name("levee-access-log".into())
            .spawn(move || writer.run(out, open))?;
        Ok(Self {
            target: target.clone(),
            lines,
            reopen,
            dropped,
        })
    }

    pub fn target(&self) -> &AccessTarget {
        &self.target
    }

    /// Asks the writer to flush and open its target again (log rotation:
    /// the old file was renamed; a new one is created at the path).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Hands a line to the writer, or drops and counts it: never waits.
    pub fn send(&self, line: Vec<u8>) {
        match self.lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn append(path: &PathBuf) -> io::Result<File> {
    File::options().append(true).create(true).open(path)
}

/// The writer thread's end of the channel. It exits when the last
/// [`AccessLog`] handle is gone (a reload moved the log elsewhere).
struct Writer {
    lines: Receiver<Vec<u8>>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
}

impl Writer {
    fn run<W: Write>(self, out: W, mut open: impl FnMut() -> io::Result<W>) {
        let mut out = BufWriter::with_capacity(64 * 1024, out);
        // When the oldest unflushed line was written (std time: this thread
        // is not on a tokio runtime).
        let mut unflushed: Option<std::time::Instant> = None;
        loop {
            let idle = match self.lines.recv_timeout(FLUSH_EVERY) {
                Ok(line) => {
                    if out.write_all(&line).is_err() {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    unflushed.get_or_insert_with(std::time::Instant::now);
                    false
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            };
            if unflushed.is_some_and(|t| idle || t.elapsed() >= FLUSH_EVERY) {
                if let Err(e) = out.flush() {
                    warn!(error = %e, "cannot write the access log");
                }
                unflushed = None;
            }
            if self.reopen.swap(false, Ordering::Relaxed) {
                let _ = out.flush();
                unflushed = None;
                match open() {
                    Ok(w) => out = BufWriter::with_capacity(64 * 1024, w),
                    Err(e) => {
                        warn!(error = %e, "cannot reopen the access log; still writing to the old one")
                    }
                }
            }
        }
    }
}

/// The node that answered (or last failed), for the log.
#[derive(Debug, Clone)]
pub struct UpstreamInfo {
    pub node: Arc<NodeHot>,
    /// Tries the request made, this one included.
    pub attempts: u8,
    /// From sending to the node's response headers; `None` without them.
    pub headers_after: Option<Duration>,
    /// The request body's length when it was read whole before sending.
    pub kept_body: Option<u64>,
}

/// What the log knows of a request from its arrival; the rest is added as
/// its response is decided and its body ends. Built only with the log on.
#[derive(Debug)]
pub struct AccessEntry {
    state: Arc<ProxyState>,
    at: SystemTime,
    started: Instant,
    request_id: Option<HeaderValue>,
    peer: SocketAddr,
    method: Method,
    uri: Uri,
    host: Option<HeaderValue>,
    version: Version,
    declared_body: Option<u64>,
    pub route: Option<usize>,
    pub class: Option<usize>,
    pub status: u16,
    pub reason: Option<ErrorReason>,
}

impl AccessEntry {
    /// The entry for `req`, if `state` has an access log. Clones of the
    /// request's parts are reference counts, not copies.
    pub fn new(
        state: &Arc<ProxyState>,
        req: &Request<crate::body::ClientBody>,
        peer: SocketAddr,
        started: Instant,
    ) -> Option<Self> {
        state.access_log.as_ref()?;
        let declared_body = req
            .headers()
            .contains_key(http::header::CONTENT_LENGTH)
            .then(|| req.body().size_hint().exact())
            .flatten();
        Some(Self {
            state: Arc::clone(state),
            at: SystemTime::now(),
            started,
            request_id: req.headers().get(&X_REQUEST_ID).cloned(),
            peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: req.headers().get(HOST).cloned(),
            version: req.version(),
            declared_body,
            route: None,
            class: None,
            status: 0,
            reason: None,
        })
    }

    /// Formats the line and hands it to the writer.
    pub fn write(&self, upstream: Option<&UpstreamInfo>, bytes_out: u64, complete: bool) {
        let Some(log) = &self.state.access_log else {
            return;
        };
        let route = self.route.and_then(|i| self.state.routes.get(i));
        let host = match self.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => self.host.as_ref().map_or(&b""[..], HeaderValue::as_bytes),
        };
        let line = Line {
            at: self.at,
            request_id: self
                .request_id
                .as_ref()
                .map_or(&b""[..], HeaderValue::as_bytes),
            client: self.peer,
            method: Some(self.method.as_str()),
            host: Some(host),
            path: Some(self.uri.path()),
            version: Some(self.version),
            status: self.status,
            route: route.map(|r| r.name.as_str()),
            backend: upstream
                .map(|u| u.node.backend.as_str())
                .or(route.map(|r| r.stats.backend.as_str())),
            node: upstream.map(|u| u.node.addr.as_str()),
            attempts: upstream.map_or(0, |u| u.attempts),
            error: self.reason.map(ErrorReason::as_str),
            class: self
                .class
                .and_then(|c| self.state.classes.names().get(c))
                .map(String::as_str),
            bytes_in: self.declared_body.or(upstream.and_then(|u| u.kept_body)),
            bytes_out,
            duration: Some(self.started.elapsed()),
            upstream: upstream.and_then(|u| u.headers_after),
            complete,
        };
        let mut out = Vec::with_capacity(320 + line.path.map_or(0, str::len));
        line.write(&mut out);
        log.send(out);
    }
}

/// A request the HTTP/1 gate refused before hyper parsed it (bad framing,
/// an oversized head): what is known of it, kept until levee's answer has
/// gone out or the connection ended, then logged. Built only with the log
/// on, and only for a refusal.
#[derive(Debug)]
pub struct RefusedHead {
    log: Arc<AccessLog>,
    at: SystemTime,
    request_id: HeaderValue,
    client: SocketAddr,
    method: Option<String>,
    path: Option<String>,
    version: Option<Version>,
    reason: ErrorReason,
}

impl RefusedHead {
    /// The entry for a refused `head` (its bytes as far as they arrived),
    /// if `state` has an access log. Method and path are taken from a
    /// request line that arrived whole, when they are well-formed and the
    /// target is within `max_uri_bytes`.
    pub fn new(
        state: &ProxyState,
        head: &[u8],
        client: SocketAddr,
        request_id: &HeaderValue,
        reason: ErrorReason,
    ) -> Option<Self> {
        let log = Arc::clone(state.access_log.as_ref()?);
        let (method, path, version) = request_line(head, state.config.server.max_uri_bytes);
        Some(Self {
            log,
            at: SystemTime::now(),
            request_id: request_id.clone(),
            client,
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
            version,
            reason,
        })
    }

    /// Logs it: `bytes_out` of the answer's body went out, all of it or not.
    pub fn write(&self, bytes_out: u64, complete: bool) {
        let line = Line {
            at: self.at,
            request_id: self.request_id.as_bytes(),
            client: self.client,
            method: self.method.as_deref(),
            host: None,
            path: self.path.as_deref(),
            version: self.version,
            status: crate::error::status_of(self.reason).as_u16(),
            route: None,
            backend: None,
            node: None,
            attempts: 0,
            error: Some(self.reason.as_str()),
            class: None,
            bytes_in: None,
            bytes_out,
            duration: None,
            upstream: None,
            complete,
        };
        let mut out = Vec::with_capacity(320 + line.path.map_or(0, str::len));
        line.write(&mut out);
        self.log.send(out);
    }
}

/// Method, path (without the query) and version of a head's request line,
/// each when it is well-formed and arrived whole (the method once a space
/// followed it; path and version with the line's end).
fn request_line(
    head: &[u8],
    max_uri_bytes: usize,
) -> (Option<&str>, Option<&str>, Option<Version>) {
    let start = head
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(head.len());
    let head = &head[start..];
    let (line, whole) = match head.iter().position(|&b| b == b'\n') {
        Some(end) => (
            head[..end].strip_suffix(b"\r").unwrap_or(&head[..end]),
            true,
        ),
        None => (head, false),
    };
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts
        .next()
        .filter(|m| m.len() < line.len() && !m.is_empty() && m.iter().all(|&b| is_tchar(b)))
        .and_then(|m| std::str::from_utf8(m).ok());
    if !whole {
        return (method, None, None);
    }
    let path = parts
        .next()
        .filter(|t| t.len() <= max_uri_bytes && t.iter().all(|&b| b.is_ascii_graphic()))
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(target_path);
    let version = match parts.next() {
        Some(b"HTTP/1.1") => Some(Version::HTTP_11),
        Some(b"HTTP/1.0") => Some(Version::HTTP_10),
        _ => None,
    };
    (method, path, version)
}

/// The path of an origin-form (`/a?b`) or absolute-form
/// (`http://host/a?b`) target, without its query.
fn target_path(target: &str) -> Option<&str> {
    let path = match target.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None if target.starts_with('/') => target,
        None => return None,
    };
    Some(path.split_once('?').map_or(path, |(p, _)| p))
}

/// One access log line's fields, borrowed.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    pub at: SystemTime,
    pub request_id: &'a [u8],
    pub client: SocketAddr,
    /// `None` (null) only for a head the gate refused: what it could not
    /// read of its request line, and its host.
    pub method: Option<&'a str>,
    pub host: Option<&'a [u8]>,
    pub path: Option<&'a str>,
    pub version: Option<Version>,
    pub status: u16,
    pub route: Option<&'a str>,
    pub backend: Option<&'a str>,
    pub node: Option<&'a str>,
    pub attempts: u8,
    pub error: Option<&'a str>,
    pub class: Option<&'a str>,
    pub bytes_in: Option<u64>,
    pub bytes_out: u64,
    /// `None` for a refused head: its arrival is not timed.
    pub duration: Option<Duration>,
    pub upstream: Option<Duration>,
    pub complete: bool,
}

impl Line<'_> {
    /// Appends the line, newline included, to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        rfc3339_ms(self.at, out);
        out.extend_from_slice(b"\",\"request_id\":");
        string(self.request_id, out);
        out.extend_from_slice(b",\"client\":\"");
        // An address has no character JSON must escape.
        let _ = write!(out, "{}", self.client);
        out.extend_from_slice(b"\",\"method\":");
        optional(self.method, out);
        out.extend_from_slice(b",\"host\":");
        match self.host {
            Some(host) => string(host, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"path\":");
        optional(self.path, out);
        out.extend_from_slice(b",\"version\":");
        optional(self.version.map(version), out);
        let _ = write!(out, ",\"status\":{},\"route\":", self.status);
        optional(self.route, out);
        out.extend_from_slice(b",\"backend\":");
        optional(self.backend, out);
        out.extend_from_slice(b",\"node\":");
        optional(self.node, out);
        let _ = write!(out, ",\"attempts\":{},\"error\":", self.attempts);
        optional(self.error, out);
        out.extend_from_slice(b",\"breaker_class\":");
        optional(self.class, out);
        out.extend_from_slice(b",\"bytes_in\":");
        match self.bytes_in {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(out, ",\"bytes_out\":{},\"duration_ms\":", self.bytes_out);
        match self.duration {
            Some(d) => millis(d, out),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream {
            Some(d) => millis(d, out),
            None => out.extend_from_slice(b"null"),
        }
        let _ = writeln!(out, ",\"complete\":{}}}", self.complete);
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn optional(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => string(s.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of `bytes`: quotes, backslashes and control characters
/// escaped; bytes that are not UTF-8 (a header may hold them) become U+FFFD.
fn string(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if c < ' ' || c == '\u{7f}' => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

/// Milliseconds with microsecond precision: `12.345`.
fn millis(d: Duration, out: &mut Vec<u8>) {
    let us = d.as_micros();
    let _ = write!(out, "{}.{:03}", us / 1000, us % 1000);
}

/// `2026-12-01T10:53:43.123Z`.
fn rfc3339_ms(at: SystemTime, out: &mut Vec<u8>) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[path = "access_log_tests.rs"]
mod tests;
