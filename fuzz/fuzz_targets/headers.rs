//! Header hygiene on arbitrary header maps: `strip_hop_by_hop`, then
//! `set_forwarded`, as the proxy forwards a request, with `request_host` and
//! `head_size` on the way. Nothing may panic, and afterwards:
//!
//! * no hop-by-hop header is left: the fixed set (connection, keep-alive,
//!   proxy-connection, te, trailer, transfer-encoding, upgrade) nor any
//!   header named in a `Connection` value (a comma-separated list of names,
//!   optional whitespace around each);
//! * `X-Forwarded-For` is one field that ends with the peer's address,
//!   `X-Forwarded-Proto` is the scheme and `X-Forwarded-Host` the host given;
//! * `request_host` is the Host header (when it is text) or the target's
//!   authority, and none only when there is neither;
//! * `head_size` counts at least every name and value.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use levee_proxy::headers::{
    head_size, request_host, set_forwarded, strip_hop_by_hop, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
};
use libfuzzer_sys::fuzz_target;

/// Names the fuzzer picks by index, so the interesting ones come up often.
const KNOWN: [&str; 16] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
    "content-length",
    "x-a",
    "x-b",
    "close",
];

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    Known(u8),
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
enum Peer {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    fields: Vec<(Name<'a>, &'a [u8])>,
    uri: &'a [u8],
    peer: Peer,
    https: bool,
}

/// The names a `Connection` value lists: comma-separated, optional
/// whitespace (SP / HTAB) around each, read from the bytes as sent.
fn listed(value: &HeaderValue) -> Vec<HeaderName> {
    value
        .as_bytes()
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii_start().trim_ascii_end())
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect()
}

fuzz_target!(|input: Input<'_>| {
    let mut headers = HeaderMap::new();
    for (name, value) in &input.fields {
        let name = match name {
            Name::Known(i) => HeaderName::from_static(KNOWN[usize::from(*i) % KNOWN.len()]),
            Name::Raw(bytes) => match HeaderName::from_bytes(bytes) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        headers.append(name, value);
    }
    let uri: http::Uri =
        http::Uri::try_from(input.uri).unwrap_or_else(|_| http::Uri::from_static("/"));
    let peer = match input.peer {
        Peer::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
        Peer::V6(o) => IpAddr::V6(Ipv6Addr::from(o)),
    };
    let proto = if input.https { "https" } else { "http" };

    // As a request comes in: its size and the host it addressed.
    let size = head_size(&headers, &uri);
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum();
    assert!(
        size > fields,
        "head_size {size} does not cover {fields} bytes of fields"
    );
    // One of the two places a host can come from (which one wins is
    // request_host's rule), and none only when neither has one.
    let host = request_host(&headers, &uri);
    let from_header = headers.get(HOST).and_then(|v| v.to_str().ok());
    let from_target = uri.authority().map(|a| a.as_str());
    match host {
        Some(h) => assert!(
            Some(h) == from_header || Some(h) == from_target,
            "request_host {h:?} is neither Host {from_header:?} nor the authority {from_target:?}"
        ),
        None => assert!(from_header.is_none() && from_target.is_none()),
    }
    let host_value = headers.get(HOST).cloned();

    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(listed)
        .collect();

    strip_hop_by_hop(&mut headers);
    for name in HOP_BY_HOP {
        assert!(!headers.contains_key(name), "{name} left after strip");
    }
    for name in &named {
        assert!(
            !headers.contains_key(name),
            "{name} is named in Connection but left after strip"
        );
    }

    set_forwarded(&mut headers, peer, proto, host_value.as_ref());
    let xff: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    assert_eq!(xff.len(), 1, "X-Forwarded-For fields: {xff:?}");
    let peer_text = peer.to_string();
    assert!(
        xff[0].as_bytes().ends_with(peer_text.as_bytes()),
        "X-Forwarded-For {:?} does not end with the peer {peer_text}",
        xff[0]
    );
    assert_eq!(headers.get_all(&X_FORWARDED_PROTO).iter().count(), 1);
    assert_eq!(headers[&X_FORWARDED_PROTO], proto);
    assert_eq!(
        headers.get_all(&X_FORWARDED_HOST).iter().count(),
        usize::from(host_value.is_some())
    );
    assert_eq!(headers.get(&X_FORWARDED_HOST), host_value.as_ref());

    // The stripped map is measured again on its way out.
    let _ = head_size(&headers, &uri);
});
