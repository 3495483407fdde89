//! `[route.rate_limit]`, `[backend.drift]` and `[backend.adaptive]`.

use super::*;

fn rate_limit(table: &str) -> String {
    config("", "", &format!("[route.rate_limit]\n{table}"))
}

#[test]
fn a_route_has_no_rate_limit_unless_it_says_so() {
    assert_eq!(ok(&config("", "", "")).routes[0].rate_limit, None);
}

#[test]
fn a_rate_limit_takes_its_defaults_and_each_key_form() {
    let c = ok(&rate_limit("requests_per_second = 2.5"));
    let rl = c.routes[0].rate_limit.clone().unwrap();
    assert_eq!(rl.per_token, Duration::from_millis(400));
    assert_eq!(rl.burst, 3, "the rate rounded up");
    assert_eq!(rl.key, RateLimitKey::Route);
    assert_eq!(rl.max_keys, 100_000);

    let c = ok(&rate_limit(
        "requests_per_second = 100\nburst = 7\nkey = \"header:X-API-Key\"\nmax_keys = 5",
    ));
    let rl = c.routes[0].rate_limit.clone().unwrap();
    assert_eq!(rl.per_token, Duration::from_millis(10));
    assert_eq!(rl.burst, 7);
    assert_eq!(
        rl.key,
        RateLimitKey::Header(http::HeaderName::from_static("x-api-key"))
    );
    assert_eq!(rl.key.to_string(), "header:x-api-key");
    assert_eq!(rl.max_keys, 5);

    let c = ok(&rate_limit("requests_per_second = 0.5\nkey = \"client\""));
    let rl = c.routes[0].rate_limit.clone().unwrap();
    assert_eq!(rl.per_token, Duration::from_secs(2));
    assert_eq!(rl.burst, 1);
    assert_eq!(rl.key, RateLimitKey::Client);
}

#[test]
fn a_bad_rate_limit_names_its_key() {
    let text = rate_limit("burst = 5");
    expect(
        &text,
        "route[0].rate_limit.requests_per_second",
        line_with(&text, "[route.rate_limit]"),
        "is required",
    );
    for rate in ["0", "-1", "2e9", "nan"] {
        let text = rate_limit(&format!("requests_per_second = {rate}"));
        expect(
            &text,
            "route[0].rate_limit.requests_per_second",
            line_with(&text, "requests_per_second"),
            "greater than 0",
        );
    }
    let text = rate_limit("requests_per_second = 1\nburst = 0");
    expect(
        &text,
        "route[0].rate_limit.burst",
        line_with(&text, "burst"),
        "from 1",
    );
    let text = rate_limit("requests_per_second = 1\nkey = \"ip\"");
    expect(
        &text,
        "route[0].rate_limit.key",
        line_with(&text, "key ="),
        "header:NAME",
    );
    let text = rate_limit("requests_per_second = 1\nkey = \"header:bad name\"");
    expect(
        &text,
        "route[0].rate_limit.key",
        line_with(&text, "key ="),
        "not a valid header name",
    );
    let text = rate_limit("requests_per_second = 1\nmax_keys = 10");
    expect(
        &text,
        "route[0].rate_limit.max_keys",
        line_with(&text, "max_keys"),
        "only applies to a keyed limit",
    );
    let text = rate_limit("requests_per_second = 1\nkey = \"client\"\nmax_keys = 0");
    expect(
        &text,
        "route[0].rate_limit.max_keys",
        line_with(&text, "max_keys"),
        "at least 1",
    );
}

#[test]
fn drift_thresholds_take_their_defaults_and_can_be_set() {
    let c = ok(&config("", "", ""));
    assert_eq!(c.backends[0].drift, DriftConfig::default());
    let c = ok(&config(
        "",
        "[backend.drift]\nerror_rate_margin = 0.2\nerror_rate_factor = 2\nlatency_factor = 5.5\n\
         sustain = \"30s\"\nmin_requests = 50\nwindow = \"1m\"",
        "",
    ));
    assert_eq!(
        c.backends[0].drift,
        DriftConfig {
            error_rate_margin: 0.2,
            error_rate_factor: 2.0,
            latency_factor: 5.5,
            sustain: Duration::from_secs(30),
            min_requests: 50,
            window: Duration::from_secs(60),
        }
    );
}

#[test]
fn bad_drift_thresholds_name_their_key() {
    let cases = [
        (
            "error_rate_margin = 1.5",
            "error_rate_margin",
            "between 0.0 and 1.0",
        ),
        ("error_rate_factor = 0.5", "error_rate_factor", "at least 1"),
        ("latency_factor = inf", "latency_factor", "finite"),
        ("sustain = \"0s\"", "sustain", "greater than zero"),
        ("min_requests = 0", "min_requests", "at least 1"),
        ("window = \"500ms\"", "window", "at least 1s"),
    ];
    for (line, key, says) in cases {
        let text = config("", &format!("[backend.drift]\n{line}"), "");
        expect(
            &text,
            &format!("backend[0].drift.{key}"),
            line_with(&text, line),
            says,
        );
    }
}

#[test]
fn adaptive_is_off_by_default_and_can_be_set() {
    let c = ok(&config("", "", ""));
    assert_eq!(c.backends[0].adaptive, AdaptiveConfig::defaults(1024));
    assert!(!c.backends[0].adaptive.enabled);
    assert_eq!(c.backends[0].adaptive.min_in_flight, 4);
    // A small backend's floor is its max_in_flight.
    let c = ok(&config("", "max_in_flight = 2", ""));
    assert_eq!(c.backends[0].adaptive.min_in_flight, 2);
    let c = ok(&config(
        "",
        "max_in_flight = 64\n[backend.adaptive]\nenabled = true\nmin_in_flight = 8\n\
         tolerance = 1.5\nwindow = \"250ms\"\nmin_rtt_interval = \"1m\"",
        "",
    ));
    assert_eq!(
        c.backends[0].adaptive,
        AdaptiveConfig {
            enabled: true,
            min_in_flight: 8,
            tolerance: 1.5,
            window: Duration::from_millis(250),
            min_rtt_interval: Duration::from_secs(60),
        }
    );
}

#[test]
fn bad_adaptive_settings_name_their_key() {
    let cases = [
        ("min_in_flight = 0", "min_in_flight", "at least 1"),
        (
            "min_in_flight = 300",
            "min_in_flight",
            "max_in_flight (256)",
        ),
        ("tolerance = 0.9", "tolerance", "at least 1"),
        ("tolerance = nan", "tolerance", "finite"),
        ("window = \"0s\"", "window", "greater than zero"),
        (
            "min_rtt_interval = \"0s\"",
            "min_rtt_interval",
            "greater than zero",
        ),
        ("enable = true", "enable", "unknown field"),
    ];
    for (line, key, says) in cases {
        let text = config(
            "",
            &format!("max_in_flight = 256\n[backend.adaptive]\n{line}"),
            "",
        );
        let e = err(&text);
        assert!(e.to_string().contains(says), "{line}: {e}");
        assert_eq!(e.line(), Some(line_with(&text, line)), "{line}: {e}");
        if key != "enable" {
            assert_eq!(e.key(), Some(&*format!("backend[0].adaptive.{key}")));
        }
    }
}
