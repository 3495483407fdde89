#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use http::Method;

fn parse(s: &str) -> Behavior {
    s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

#[test]
fn parses_every_mode() {
    assert_eq!(parse("healthy"), Behavior::Healthy { body_bytes: 2 });
    assert_eq!(
        parse("healthy:1024"),
        Behavior::Healthy { body_bytes: 1024 }
    );
    assert_eq!(
        parse("HEALTHY:16k"),
        Behavior::Healthy { body_bytes: 16384 }
    );
    assert_eq!(
        parse("healthy:1m"),
        Behavior::Healthy {
            body_bytes: 1 << 20
        }
    );
    assert_eq!(parse("echo"), Behavior::Echo);
    assert_eq!(parse("WebSocket"), Behavior::WebSocketEcho);
    assert_eq!(
        parse("status:503"),
        Behavior::Status {
            code: 503,
            share: 1.0,
            methods: None
        }
    );
    assert_eq!(
        parse("status:500:0.25"),
        Behavior::Status {
            code: 500,
            share: 0.25,
            methods: None
        }
    );
    assert_eq!(
        parse("status:500:1.0:POST,put"),
        Behavior::Status {
            code: 500,
            share: 1.0,
            methods: Some(vec![Method::POST, Method::PUT])
        }
    );
    assert_eq!(
        parse("status:500:1:*"),
        Behavior::Status {
            code: 500,
            share: 1.0,
            methods: None
        }
    );
    assert_eq!(parse("stuck"), Behavior::Stuck);
    assert_eq!(
        parse("stuck:post,PUT"),
        Behavior::StuckOn {
            methods: vec![http::Method::POST, http::Method::PUT]
        }
    );
    assert_eq!(parse("stuck:*"), Behavior::Stuck);
    assert_eq!(
        parse("slow:250ms"),
        Behavior::Slow {
            delay: Duration::from_millis(250),
            body_bytes: 2
        }
    );
    assert_eq!(
        parse("slow:1.5s:10"),
        Behavior::Slow {
            delay: Duration::from_millis(1500),
            body_bytes: 10
        }
    );
    assert_eq!(
        parse("loaded:20ms:5ms"),
        Behavior::Loaded {
            base: Duration::from_millis(20),
            per_in_flight: Duration::from_millis(5),
            body_bytes: 2
        }
    );
    assert_eq!(
        parse("Loaded:1s:500us:1k"),
        Behavior::Loaded {
            base: Duration::from_secs(1),
            per_in_flight: Duration::from_micros(500),
            body_bytes: 1024
        }
    );
    assert_eq!(
        parse("drip:5:100:200ms"),
        Behavior::Drip {
            chunks: 5,
            chunk_bytes: 100,
            interval: Duration::from_millis(200)
        }
    );
    assert_eq!(parse("reset-headers"), Behavior::ResetMidHeaders);
    assert_eq!(
        parse("reset-body:1000:10"),
        Behavior::ResetMidBody {
            total_bytes: 1000,
            after_bytes: 10
        }
    );
    assert_eq!(parse(" refuse "), Behavior::Refuse);
}

#[test]
fn parses_durations() {
    assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
    assert_eq!(parse_duration("0.25s").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("15ms").unwrap(), Duration::from_millis(15));
    assert_eq!(parse_duration("800us").unwrap(), Duration::from_micros(800));
    for bad in ["", "10", "ms", "-1s", "1.2.3s", "1h", "abcms"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn rejects_bad_modes() {
    let cases = [
        ("teapot", "unknown mode"),
        ("echo:1", "expected `echo`"),
        ("healthy:lots", "invalid size"),
        ("status", "expected `status:CODE"),
        ("status:42", "invalid status code"),
        ("status:101", "invalid status code"),
        ("status:500:1.5", "invalid share"),
        ("status:500:x", "invalid share"),
        ("status:500:1:PO ST", "invalid method"),
        ("slow", "expected `slow:DURATION"),
        ("slow:250", "invalid duration"),
        ("loaded:20ms", "expected `loaded:BASE:PER_INFLIGHT"),
        ("loaded:20ms:5", "invalid duration"),
        ("loaded:20ms:5ms:x", "invalid size"),
        ("drip:1:2", "expected `drip:CHUNKS"),
        ("reset-body:10:10", "must be smaller"),
        ("reset-body:10", "expected `reset-body"),
        ("refuse:now", "expected `refuse`"),
    ];
    for (input, expected) in cases {
        let err = input.parse::<Behavior>().unwrap_err().to_string();
        assert!(err.contains(expected), "{input:?}: {err:?}");
    }
}

#[test]
fn display_round_trips() {
    let behaviors = [
        Behavior::Healthy { body_bytes: 12345 },
        Behavior::Echo,
        Behavior::WebSocketEcho,
        Behavior::Status {
            code: 500,
            share: 0.5,
            methods: Some(vec![Method::POST, Method::DELETE]),
        },
        Behavior::Status {
            code: 429,
            share: 1.0,
            methods: None,
        },
        Behavior::Stuck,
        Behavior::StuckOn {
            methods: vec![Method::POST, Method::PATCH],
        },
        Behavior::Slow {
            delay: Duration::from_millis(1500),
            body_bytes: 3,
        },
        Behavior::Slow {
            delay: Duration::from_micros(1500),
            body_bytes: 3,
        },
        Behavior::Loaded {
            base: Duration::from_millis(20),
            per_in_flight: Duration::from_micros(250),
            body_bytes: 7,
        },
        Behavior::Loaded {
            base: Duration::ZERO,
            per_in_flight: Duration::from_secs(1),
            body_bytes: 0,
        },
        Behavior::Drip {
            chunks: 4,
            chunk_bytes: 8,
            interval: Duration::from_secs(2),
        },
        Behavior::ResetMidHeaders,
        Behavior::ResetMidBody {
            total_bytes: 100,
            after_bytes: 50,
        },
        Behavior::Refuse,
    ];
    for behavior in behaviors {
        let text = behavior.to_string();
        assert_eq!(parse(&text), behavior, "{text}");
    }
}

#[test]
fn share_bounds() {
    assert!((0..1000).all(|_| share_hits(1.0)));
    assert!((0..1000).all(|_| !share_hits(0.0)));
    assert!((0..1000).all(|_| !share_hits(f64::NAN)));
    let hits = (0..10_000).filter(|_| share_hits(0.5)).count();
    assert!((3_000..7_000).contains(&hits), "{hits}");
}
