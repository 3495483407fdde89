//! Header hygiene for forwarding, as RFC 9110 §7.6.1 asks.
//!
//! Hop-by-hop headers describe one connection and must not cross the proxy;
//! the `X-Forwarded-*` family tells the node who the client was; a request id
//! ties the client's view, levee's log and the node's log together.

use std::cell::Cell;
use std::net::IpAddr;

use bytes::BytesMut;

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Longest client-supplied request id that is kept as is.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The fixed hop-by-hop set (RFC 9110 §7.6.1 and the common non-standard ones).
/// Tested by [`is_hop_by_hop`]; the array is for removal, which is rare.
static HOP_BY_HOP: [HeaderName; 7] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether `headers` holds any of the fixed hop-by-hop set (`Upgrade` and
/// `Connection` among them): one pass over the names, no hashing. Most
/// messages carry none of them, and with no `Connection` header nothing
/// else can be hop-by-hop.
pub fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    headers.keys().any(is_hop_by_hop)
}

/// Whether `name` is one of [`HOP_BY_HOP`]: by its text, length first.
/// Comparing `HeaderName`s instead builds and drops the set's names (two
/// are not standard names, so dropping them is not free) at every use.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "upgrade" || name == "trailer",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        _ => false,
    }
}

/// Removes hop-by-hop headers: the fixed set and every header `Connection`
/// names. False when there were none, and nothing was looked at but names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    if !has_hop_by_hop(headers) {
        return false;
    }
    if headers.contains_key(CONNECTION) {
        // Names listed in Connection are hop-by-hop too. The usual values
        // ("keep-alive", "close", "upgrade") name nothing beyond the fixed
        // set, so the list is only built (and allocated) for other tokens.
        // Split the bytes, not a `&str`: a value with obs-text (bytes above
        // 0x7F) must still have its valid names stripped.
        let named = connection_named(headers.get_all(CONNECTION).iter().map(|v| v.as_bytes()));
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    true
}

/// The names `Connection` values list beyond "close" and the fixed set.
pub(crate) fn connection_named<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<HeaderName> {
    values
        .flat_map(|v| v.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.eq_ignore_ascii_case(b"close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| t.eq_ignore_ascii_case(h.as_str().as_bytes()))
        })
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .collect()
}

/// Non-empty, at most 128 bytes, visible ASCII only.
pub fn usable_request_id(v: &HeaderValue) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_LEN
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// Request ids cut from one block of a thread's before it takes another.
const IDS_PER_BLOCK: usize = 16;

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// 32 lowercase hex digits of randomness. Its bytes are shared, so the
/// copies on the request and the response cost no allocation each; and
/// they are cut from a block of the thread's, so making one allocates only
/// once in [`IDS_PER_BLOCK`] (a block is freed when its last id is).
pub fn new_request_id() -> HeaderValue {
    const LEN: usize = 32;
    thread_local! {
        static BLOCK: Cell<BytesMut> = Cell::new(BytesMut::new());
    }
    let mut buf = [0u8; LEN];
    // A byte's two digits at a time, not a digit of a 128-bit shift.
    for (pair, byte) in buf
        .chunks_exact_mut(2)
        .zip(fastrand::u128(..).to_be_bytes())
    {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
    let id = BLOCK.with(|cell| {
        let mut block = cell.take();
        if block.capacity() < LEN {
            block = BytesMut::with_capacity(LEN * IDS_PER_BLOCK);
        }
        block.extend_from_slice(&buf);
        let id = block.split().freeze();
        cell.set(block);
        id
    });
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// How the client reached levee: the value of `X-Forwarded-Proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// Over the `[server.tls]` listener.
    Https,
}

impl Scheme {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Sets the `X-Forwarded-*` headers: the peer is appended to `X-Forwarded-For`,
/// the scheme and the original host are set (replacing any sent by the client).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    set_forwarded_from(headers, &peer_value(peer), proto, host);
}

/// The `X-Forwarded-*` lines of a request whose client sent none
/// ([`Forwarded::fits`], the common case): the HTTP/1 node client writes them
/// after the request's own lines ([`Forwarded::write`]) instead of their
/// being inserted into its header map, where each costs a hash, a probe and
/// an entry (about 1,000 instructions a request under callgrind for the
/// three). Where a map is needed (HTTP/2 nodes, a rate limit keyed on one of
/// them) they are read or put there ([`Forwarded::get`], [`Forwarded::apply`]):
/// the same lines as [`set_forwarded_from`] would have left in the map.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The peer's entry ([`peer_value`]).
    pub peer: HeaderValue,
    /// The host the request addressed, if it named one.
    pub host: Option<HeaderValue>,
    pub scheme: Scheme,
}

/// `X-Forwarded-Proto`'s values, to lend.
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

impl Forwarded {
    /// Whether `headers` has no `X-Forwarded-*` line (nothing to append to
    /// or replace): one pass over the names, no lookup.
    pub fn fits(headers: &HeaderMap) -> bool {
        !headers
            .keys()
            .any(|name| name.as_str().starts_with("x-forwarded-"))
    }

    /// The value of `name` among these lines.
    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        if name == X_FORWARDED_FOR {
            Some(&self.peer)
        } else if name == X_FORWARDED_PROTO {
            Some(self.proto())
        } else if name == X_FORWARDED_HOST {
            self.host.as_ref()
        } else {
            None
        }
    }

    fn proto(&self) -> &'static HeaderValue {
        match self.scheme {
            Scheme::Http => &HTTP,
            Scheme::Https => &HTTPS,
        }
    }

    /// Puts the lines into `headers`, which [`Forwarded::fits`].
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.peer.clone());
        headers.insert(X_FORWARDED_PROTO, self.proto().clone());
        if let Some(host) = &self.host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }

    /// Writes the lines as an HTTP/1 head's field lines.
    pub fn write(&self, dst: &mut Vec<u8>) {
        dst.extend_from_slice(b"x-forwarded-for: ");
        dst.extend_from_slice(self.peer.as_bytes());
        dst.extend_from_slice(b"\r\nx-forwarded-proto: ");
        dst.extend_from_slice(self.scheme.as_str().as_bytes());
        dst.extend_from_slice(b"\r\n");
        if let Some(host) = &self.host {
            dst.extend_from_slice(b"x-forwarded-host: ");
            dst.extend_from_slice(host.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
    }
}

/// The peer address as an `X-Forwarded-For` entry. A connection makes it
/// once for all its requests ([`set_forwarded_from`]).
pub fn peer_value(peer: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    // The longest IPv6 text is 45 bytes.
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{peer}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`set_forwarded`] with the peer's entry already made ([`peer_value`]):
/// without a prior `X-Forwarded-For`, the common case, it is shared, not
/// formatted or copied.
pub fn set_forwarded_from(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    // One lookup for the common case, no prior `X-Forwarded-For`.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(peer.clone());
        }
        Entry::Occupied(mut e) => {
            // Every prior line, in order (several lines are one comma list).
            let mut prior = e
                .iter()
                .map(HeaderValue::as_bytes)
                .filter(|p| !p.iter().all(u8::is_ascii_whitespace))
                .peekable();
            let value = if prior.peek().is_none() {
                Some(peer.clone())
            } else {
                // "a.b.c.d" or an IPv6 text, after the prior list: built in one
                // buffer, copied once into the header value.
                let mut buf: Vec<u8> = Vec::with_capacity(64);
                for p in prior {
                    buf.extend_from_slice(p);
                    buf.extend_from_slice(b", ");
                }
                buf.extend_from_slice(peer.as_bytes());
                HeaderValue::from_bytes(&buf).ok()
            };
            // Any lines are folded into one: `insert` replaces them all.
            match value {
                Some(v) => {
                    e.insert(v);
                }
                None => {
                    e.remove();
                }
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The host a request addressed: the URI's authority (an absolute-form
/// target, or HTTP/2's `:authority`) when it has one, since RFC 9112 §3.2.2
/// says it overrides Host; else the Host header's value `host`, looked up
/// once by the caller.
pub fn request_host<'a>(host: Option<&'a HeaderValue>, uri: &'a http::Uri) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|v| v.to_str().ok()))
}

/// Whether `v` is a usable Host value or target authority: `host[:port]`
/// (RFC 9110 §7.2) with a non-empty host and no userinfo. The host is a name
/// of RFC 3986 unreserved characters (letters, digits, `-._~`) with no empty
/// label (`a..b`, `.a`), which also covers IPv4 addresses, or a bracketed
/// IPv6 address; percent-encoding, sub-delimiters (`,;=!$&'()*+`), IPvFuture
/// and zone ids are refused. The port is up to five digits, at most 65535
/// (empty is allowed, as RFC 3986 allows it). Everything accepted is also
/// a valid `http::uri::Authority`. Reads bytes only; never allocates.
pub fn valid_host(v: &[u8]) -> bool {
    match v.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&rest[..end])
                .is_ok_and(|text| text.parse::<std::net::Ipv6Addr>().is_ok());
            literal
                && match &rest[end + 1..] {
                    [] => true,
                    [b':', port @ ..] => valid_port(port),
                    _ => false,
                }
        }
        None => valid_name_and_port(v),
    }
}

/// A host name or IPv4 address (unreserved characters, no empty label
/// except after a final dot), then an optional `:port`: one pass over the
/// name, which ends at the first colon. A dot is looked at only as one.
fn valid_name_and_port(v: &[u8]) -> bool {
    for (i, &b) in v.iter().enumerate() {
        if LABEL[b as usize] {
            continue;
        }
        match b {
            b'.' if i > 0 && v[i - 1] != b'.' => {}
            b':' if i > 0 => return valid_port(&v[i + 1..]),
            _ => return false,
        }
    }
    !v.is_empty()
}

/// Up to five digits, at most 65535; empty is allowed, as RFC 3986 allows it.
fn valid_port(p: &[u8]) -> bool {
    p.len() <= 5
        && p.iter()
            .try_fold(0u32, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
            .is_some_and(|n| n <= 65535)
}

/// RFC 3986's unreserved characters but the dot (a label's), one lookup
/// per byte of every Host.
static LABEL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~');
        b += 1;
    }
    table
};

/// The host without its port, for matching routes.
pub fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Rough size of a request head, as a client sent it, to enforce `max_header_bytes`.
pub fn head_size(headers: &HeaderMap, uri: &http::Uri) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    fields + uri.path_and_query().map_or(1, |pq| pq.as_str().len()) + 16
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http::header::HOST;

    #[test]
    fn the_hop_by_hop_test_matches_the_set_and_nothing_else() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for other in [
            "host",
            "content-length",
            "x-te",
            "upgrades",
            "trailers",
            "ta",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(other)), "{other}");
        }
    }

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(TRAILER, HeaderValue::from_static("x-t"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn usual_connection_values_strip_only_the_fixed_set() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Keep-Alive, Upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_for_without_a_prior_list_and_for_ipv6() {
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, "::1".parse().unwrap(), "http", None);
        assert_eq!(h[&X_FORWARDED_FOR], "::1");
        assert!(!h.contains_key(&X_FORWARDED_HOST));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("  "));
        set_forwarded(&mut h, "10.0.0.1".parse().unwrap(), "http", None);
        assert_eq!(
            h[&X_FORWARDED_FOR], "10.0.0.1",
            "a blank prior list is replaced"
        );
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_host_set() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("api.example.com");
        set_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", Some(&host));
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.9, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example.com");
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let usable = |v: &str| usable_request_id(&HeaderValue::from_str(v).unwrap());
        assert!(usable("abc-123"));
        assert!(!usable(""));
        assert!(!usable(&"x".repeat(200)));
        assert!(!usable("has space"));
        assert_eq!(new_request_id().len(), 32);
        assert!(usable(new_request_id().to_str().unwrap()));
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn request_ids_cut_from_several_blocks_are_whole_and_distinct() {
        let ids: Vec<HeaderValue> = (0..3 * IDS_PER_BLOCK + 1)
            .map(|_| new_request_id())
            .collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(id
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn valid_hosts_are_accepted_and_are_authorities() {
        for good in [
            "example.com",
            "Example.COM:8080",
            "example.com.",
            "a",
            "xn--bcher-kva.example",
            "under_score.example",
            "tilde~.example",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::7]:65535",
            "example.com:",
            "example.com:0",
        ] {
            assert!(valid_host(good.as_bytes()), "{good} is valid");
            let authority: http::uri::Authority = good.parse().unwrap();
            assert_eq!(authority.as_str(), good);
        }
    }

    #[test]
    fn invalid_hosts_are_refused() {
        let long = format!("{}:1", "a".repeat(300));
        assert!(valid_host(long.as_bytes()), "no length rule here");
        for bad in [
            "",
            ":80",
            "exa mple.com",
            " example.com",
            "example.com ",
            "user@example.com",
            "user:pw@example.com",
            "example.com/path",
            "example.com?q",
            "example.com#f",
            "example.com:80:81",
            "example.com:http",
            "example.com:65536",
            "example.com:000080",
            "exa%41mple.com",
            "a,b",
            "a;b",
            "a=b",
            "a..b",
            ".example.com",
            "..",
            "[::1",
            "[::1]x",
            "[::1]:8o",
            "[not-ipv6]",
            "[v1.future]",
            "[fe80::1%25eth0]",
            "::1",
            "\\example.com",
            "ex\tample.com",
            "exämple.com",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?} is refused");
        }
    }

    #[test]
    fn the_target_authority_wins_over_host() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("from-header"));
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(h.get(HOST), &origin), Some("from-header"));
        let absolute: http::Uri = "http://from-target:81/x".parse().unwrap();
        assert_eq!(request_host(h.get(HOST), &absolute), Some("from-target:81"));
        assert_eq!(request_host(HeaderMap::new().get(HOST), &origin), None);
    }

    #[test]
    fn a_connection_peer_value_serves_each_request_alike() {
        let peer = peer_value("2001:db8::7".parse().unwrap());
        assert_eq!(peer, "2001:db8::7");
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(peer_value(longest), longest.to_string().as_str());
        let mut first = HeaderMap::new();
        set_forwarded_from(&mut first, &peer, "https", None);
        assert_eq!(first[&X_FORWARDED_FOR], "2001:db8::7");
        assert_eq!(first[&X_FORWARDED_PROTO], "https");
        let mut second = HeaderMap::new();
        second.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        second.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        set_forwarded_from(&mut second, &peer, "http", None);
        let all: Vec<_> = second.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["1.1.1.1, 2.2.2.2, 2001:db8::7"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(HOST, HeaderValue::from_static("a"));
        h.append("x-kept", HeaderValue::from_static("1"));
        h.append("x-kept", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before, "a non-standard hop-by-hop name is still found");
    }

    #[test]
    fn several_forwarded_for_lines_are_folded_in_order() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        set_forwarded(&mut h, "10.0.0.9".parse().unwrap(), "http", None);
        let all: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"]);
    }

    #[test]
    fn host_port_is_removed() {
        assert_eq!(host_without_port("api.example.com:8080"), "api.example.com");
        assert_eq!(host_without_port("api.example.com"), "api.example.com");
        assert_eq!(host_without_port("[::1]:80"), "::1");
    }

    /// Found by the `headers` fuzz target (fuzz/): a Connection value with a
    /// byte above 0x7F was skipped whole, so the names it listed were
    /// forwarded.
    #[test]
    fn connection_names_are_stripped_from_a_value_with_obs_text() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_bytes(b" A,\xe5\xe5").unwrap());
        h.insert("a", HeaderValue::from_static(""));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "left after strip: {h:?}");
    }

    /// What [`set_forwarded_from`] leaves in a map without `X-Forwarded-*`
    /// lines, [`Forwarded`] puts there, reads and writes.
    #[test]
    fn forwarded_lines_are_those_set_forwarded_from_sets() {
        let peer = peer_value("10.1.2.3".parse().unwrap());
        for (scheme, host) in [
            (
                Scheme::Http,
                Some(HeaderValue::from_static("api.example.com")),
            ),
            (Scheme::Https, None),
        ] {
            let mut base = HeaderMap::new();
            base.insert("host", HeaderValue::from_static("api.example.com"));
            base.insert(X_REQUEST_ID, HeaderValue::from_static("abc"));
            assert!(Forwarded::fits(&base));
            let mut set = base.clone();
            set_forwarded_from(&mut set, &peer, scheme.as_str(), host.as_ref());
            let f = Forwarded {
                peer: peer.clone(),
                host: host.clone(),
                scheme,
            };
            let mut applied = base.clone();
            f.apply(&mut applied);
            assert_eq!(applied, set);
            for name in [
                X_FORWARDED_FOR,
                X_FORWARDED_PROTO,
                X_FORWARDED_HOST,
                X_REQUEST_ID,
            ] {
                let expected = set.get(&name).filter(|_| name != X_REQUEST_ID);
                assert_eq!(f.get(&name), expected, "{name}");
            }
            let mut written = Vec::new();
            f.write(&mut written);
            let mut expected = format!(
                "x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: {}\r\n",
                scheme.as_str()
            );
            if let Some(h) = &host {
                expected += &format!("x-forwarded-host: {}\r\n", h.to_str().unwrap());
            }
            assert_eq!(String::from_utf8(written).unwrap(), expected);
        }
    }

    #[test]
    fn any_x_forwarded_line_keeps_the_lines_in_the_map() {
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
        ] {
            let mut h = HeaderMap::new();
            h.insert("host", HeaderValue::from_static("a"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("v"));
            assert!(!Forwarded::fits(&h), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-forwarded", HeaderValue::from_static("v"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        assert!(
            Forwarded::fits(&h),
            "only X-Forwarded-* names are levee's to set"
        );
    }
}
