//! Resilience keys: load balancing, slow start, failover, breakers, health
//! checks, retries, shedding and route priorities.

use super::*;

/// Three backends `a`, `b`, `c` with extra keys each, and one route to `a`.
fn three(a: &str, b: &str, c: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n\
         [[backend]]\nname = \"a\"\nnodes = [\"127.0.0.1:9001\"]\n{a}\n\n\
         [[backend]]\nname = \"b\"\nnodes = [\"127.0.0.1:9002\"]\n{b}\n\n\
         [[backend]]\nname = \"c\"\nnodes = [\"127.0.0.1:9003\"]\n{c}\n\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"a\"\n"
    )
}

/// A config whose backend has `table` (header included) after its keys.
fn backend_table(table: &str) -> String {
    config("", table, "")
}

// ------------------------------------------------------------- defaults

#[test]
fn new_keys_take_their_defaults() {
    let c = ok(&config("", "", ""));
    let b = &c.backends[0];
    assert_eq!(b.load_balancing, LoadBalancing::P2cEwma);
    assert_eq!(b.slow_start, secs(30));
    assert_eq!(b.failover, None);
    assert_eq!(b.failover_index, None);
    assert_eq!(b.failover_max_share, 1.0);
    assert_eq!(b.when_all_down, WhenAllDown::Fail);
    assert_eq!(b.max_ejected_percent, 50);
    assert_eq!(b.health_check, None);

    let br = &b.breaker;
    assert!(br.enabled);
    assert_eq!(br.window, secs(10));
    assert_eq!(br.min_calls, 20);
    assert_eq!(br.failure_rate, 0.5);
    assert_eq!(br.slow_call_rate, 0.8);
    assert_eq!(br.slow_call_duration, secs(2));
    assert_eq!(br.consecutive_failures, 5);
    assert_eq!(br.failure_statuses, vec![500, 502, 503, 504]);
    assert_eq!(br.open_for, secs(5));
    assert_eq!(br.open_for_max, secs(60));
    assert_eq!(br.half_open_calls, 3);
    assert_eq!(br.jitter, 0.2);
    assert_eq!(*br, BreakerConfig::default());

    let r = &b.retry;
    assert_eq!(r.max_retries, 2);
    assert_eq!(r.budget_percent, 20);
    assert_eq!(r.budget_min_per_sec, 10);
    assert_eq!(r.on_statuses, vec![502, 503, 504]);
    assert_eq!(r.buffer_bytes, 65_536);
    assert_eq!(r.backoff, ms(10));
    assert_eq!(*r, RetryConfig::default());

    assert_eq!(b.shedding.sheddable, 0.5);
    assert_eq!(b.shedding.normal, 0.8);
    assert_eq!(b.shedding, SheddingConfig::default());

    let route = &c.routes[0];
    assert_eq!(route.priority, Priority::Normal);
    assert_eq!(Priority::default(), Priority::Normal);
    assert_eq!(route.breaker_class, None);
}

#[test]
fn empty_tables_take_their_defaults() {
    let c = ok(&backend_table(
        "[backend.breaker]\n[backend.retry]\n[backend.shedding]\n\
         [backend.health_check]\npath = \"/healthz\"",
    ));
    let b = &c.backends[0];
    assert_eq!(b.breaker, BreakerConfig::default());
    assert_eq!(b.retry, RetryConfig::default());
    assert_eq!(b.shedding, SheddingConfig::default());
    let hc = b.health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/healthz");
    assert_eq!(hc.interval, secs(2));
    assert_eq!(hc.jitter, 0.1);
    assert_eq!(hc.timeout, secs(1));
    assert_eq!(hc.unhealthy_after, 3);
    assert_eq!(hc.healthy_after, 2);
    assert_eq!(hc.expect_statuses, (200..=299).collect::<Vec<u16>>());
}

#[test]
fn every_new_key_is_read() {
    let text = three(
        "timeout = \"3s\"\n\
         load_balancing = \"least_request\"\n\
         slow_start = \"0s\"\n\
         failover = \"b\"\n\
         when_all_down = \"try_all\"\n\
         max_ejected_percent = 100\n\
         [backend.breaker]\n\
         enabled = false\nwindow = \"60s\"\nmin_calls = 1\nfailure_rate = 1\n\
         slow_call_rate = 0.25\nslow_call_duration = \"3s\"\nconsecutive_failures = 0\n\
         failure_statuses = []\nopen_for = \"1s\"\nopen_for_max = \"1s\"\n\
         half_open_calls = 1\njitter = 0\n\
         [backend.health_check]\n\
         path = \"/ready?deep=1\"\ninterval = \"5s\"\njitter = 1.0\ntimeout = \"4999ms\"\n\
         unhealthy_after = 1\nhealthy_after = 1\nexpect_statuses = [200, 204, 301]\n\
         [backend.retry]\n\
         max_retries = 0\nbudget_percent = 0\nbudget_min_per_sec = 0\non_statuses = []\n\
         buffer_bytes = 0\nbackoff = \"2999ms\"\n\
         [backend.shedding]\n\
         sheddable = 1.0\nnormal = 1.0",
        "load_balancing = \"round_robin\"\nfailover = \"c\"",
        "",
    );
    let c = ok(&text);
    let a = &c.backends[0];
    assert_eq!(a.load_balancing, LoadBalancing::LeastRequest);
    assert_eq!(a.slow_start, Duration::ZERO, "\"0s\" turns slow start off");
    assert_eq!(a.failover.as_deref(), Some("b"));
    assert_eq!(a.failover_index, Some(1));
    assert_eq!(a.when_all_down, WhenAllDown::TryAll);
    assert_eq!(a.max_ejected_percent, 100);
    assert_eq!(
        a.breaker,
        BreakerConfig {
            enabled: false,
            window: secs(60),
            min_calls: 1,
            failure_rate: 1.0,
            slow_call_rate: 0.25,
            slow_call_duration: secs(3),
            consecutive_failures: 0,
            failure_statuses: vec![],
            open_for: secs(1),
            open_for_max: secs(1),
            half_open_calls: 1,
            jitter: 0.0,
        }
    );
    assert_eq!(
        a.health_check,
        Some(HealthCheckConfig {
            path: "/ready?deep=1".into(),
            interval: secs(5),
            jitter: 1.0,
            timeout: ms(4999),
            unhealthy_after: 1,
            healthy_after: 1,
            expect_statuses: vec![200, 204, 301],
        })
    );
    assert_eq!(
        a.retry,
        RetryConfig {
            max_retries: 0,
            budget_percent: 0,
            budget_min_per_sec: 0,
            on_statuses: vec![],
            buffer_bytes: 0,
            backoff: ms(2999),
        }
    );
    assert_eq!(
        a.shedding,
        SheddingConfig {
            sheddable: 1.0,
            normal: 1.0
        }
    );

    let b = &c.backends[1];
    assert_eq!(b.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(b.failover_index, Some(2));
    assert_eq!(
        b.when_all_down,
        WhenAllDown::Failover,
        "default when failover is set"
    );
    assert_eq!(c.backends[2].failover_index, None);
    assert_eq!(c.backends[2].when_all_down, WhenAllDown::Fail);
}

#[test]
fn inline_tables_work_too() {
    let c = ok(&config(
        "",
        "breaker = { window = \"5s\", jitter = 0.0 }\nretry = { max_retries = 1 }",
        "",
    ));
    assert_eq!(c.backends[0].breaker.window, secs(5));
    assert_eq!(c.backends[0].retry.max_retries, 1);
    let text = config("", "shedding = { sheddable = 0.0 }", "");
    expect(
        &text,
        "backend[0].shedding.sheddable",
        line_with(&text, "shedding"),
        "must be greater than 0 and at most 1 (it is 0)",
    );
}

#[test]
fn spellings_round_trip() {
    for lb in LoadBalancing::ALL {
        let c = ok(&config(
            "",
            &format!("load_balancing = \"{}\"", lb.as_str()),
            "",
        ));
        assert_eq!(c.backends[0].load_balancing, lb);
        assert_eq!(lb.to_string(), lb.as_str());
    }
    for p in Priority::ALL {
        let c = ok(&config("", "", &format!("priority = \"{p}\"")));
        assert_eq!(c.routes[0].priority, p);
    }
    for w in [WhenAllDown::Fail, WhenAllDown::TryAll] {
        let c = ok(&config("", &format!("when_all_down = \"{w}\""), ""));
        assert_eq!(c.backends[0].when_all_down, w);
    }
    assert_eq!(WhenAllDown::Failover.as_str(), "failover");
    assert_eq!(LoadBalancing::P2cEwma.as_str(), "p2c_ewma");
    assert_eq!(Priority::Sheddable.as_str(), "sheddable");
}

// ------------------------------------------------------- unknown keys

#[test]
fn unknown_keys_in_new_tables_are_rejected() {
    let cases = [
        (
            "[backend.breaker]\nwindw = \"5s\"",
            "backend[0].breaker.windw",
        ),
        (
            "[backend.health_check]\npath = \"/\"\nintervl = \"1s\"",
            "backend[0].health_check.intervl",
        ),
        ("[backend.retry]\nretries = 3", "backend[0].retry.retries"),
        (
            "[backend.shedding]\ncritical = 1.0",
            "backend[0].shedding.critical",
        ),
        ("[backend.circuit]\nenabled = true", "backend[0].circuit"),
    ];
    for (table, key) in cases {
        let text = backend_table(table);
        let field = key.rsplit('.').next().unwrap();
        let e = expect(
            &text,
            key,
            line_with(&text, field),
            &format!("unknown field `{field}`"),
        );
        assert!(matches!(e, ConfigError::Shape { .. }), "{e:?}");
    }
    let text = config("", "", "priorty = \"critical\"");
    expect(
        &text,
        "route[0].priorty",
        line_with(&text, "priorty"),
        "`priority`",
    );
}

#[test]
fn new_durations_must_be_strings() {
    let text = backend_table("[backend.breaker]\nopen_for = 5");
    expect(
        &text,
        "backend[0].breaker.open_for",
        line_with(&text, "open_for"),
        "expected a duration string",
    );
    let text = config("", "slow_start = \"soon\"", "");
    expect(
        &text,
        "backend[0].slow_start",
        line_with(&text, "soon"),
        "invalid duration \"soon\"",
    );
}

#[test]
fn zero_durations_are_rejected_in_new_tables() {
    let cases = [
        ("breaker", "window"),
        ("breaker", "slow_call_duration"),
        ("breaker", "open_for"),
        ("breaker", "open_for_max"),
        ("health_check", "interval"),
        ("health_check", "timeout"),
        ("retry", "backoff"),
    ];
    for (table, key) in cases {
        let path_line = if table == "health_check" {
            "path = \"/healthz\"\n"
        } else {
            ""
        };
        let text = backend_table(&format!("[backend.{table}]\n{path_line}{key} = \"0s\""));
        expect(
            &text,
            &format!("backend[0].{table}.{key}"),
            line_with(&text, "\"0s\""),
            "must be greater than zero",
        );
    }
}

// ------------------------------------------------------ backend keys

#[test]
fn load_balancing_must_be_known() {
    let text = config("", "load_balancing = \"random\"", "");
    expect(
        &text,
        "backend[0].load_balancing",
        line_with(&text, "random"),
        "\"random\" is not a load-balancing policy; write one of \"round_robin\", \
         \"least_request\", \"p2c_ewma\"",
    );
    let text = config("", "load_balancing = \"Round-Robin\"", "");
    expect(
        &text,
        "backend[0].load_balancing",
        line_with(&text, "Round-Robin"),
        "(did you mean \"round_robin\"?)",
    );
}

#[test]
fn max_ejected_percent_is_a_percentage() {
    for bad in ["101", "-1", "1000"] {
        let text = config("", &format!("max_ejected_percent = {bad}"), "");
        expect(
            &text,
            "backend[0].max_ejected_percent",
            line_with(&text, "max_ejected_percent"),
            &format!("must be a percentage from 0 to 100 (it is {bad})"),
        );
    }
    let c = ok(&config("", "max_ejected_percent = 0", ""));
    assert_eq!(c.backends[0].max_ejected_percent, 0);
}

#[test]
fn failover_must_name_a_backend() {
    let text = three("failover = \"d\"", "", "");
    expect(
        &text,
        "backend[0].failover",
        line_with(&text, "failover"),
        "no backend named \"d\"; defined backends: a, b, c",
    );
}

#[test]
fn failover_must_not_be_itself() {
    let text = three("", "failover = \"b\"", "");
    expect(
        &text,
        "backend[1].failover",
        line_with(&text, "failover"),
        "backend \"b\" cannot fail over to itself",
    );
}

#[test]
fn failover_cycles_are_rejected() {
    let text = three("failover = \"b\" # a", "failover = \"a\"", "");
    expect(
        &text,
        "backend[0].failover",
        line_with(&text, "# a"),
        "failover chain loops: a -> b -> a; ",
    );
    let text = three(
        "failover = \"b\" # a",
        "failover = \"c\"",
        "failover = \"a\"",
    );
    let e = expect(
        &text,
        "backend[0].failover",
        line_with(&text, "# a"),
        "failover chain loops: a -> b -> c -> a",
    );
    assert!(e.to_string().contains("remove `failover`"), "{e}");
    // a leads into a loop it is not part of: the loop is reported at b.
    let text = three(
        "failover = \"b\"",
        "failover = \"c\" # b",
        "failover = \"b\"",
    );
    expect(
        &text,
        "backend[1].failover",
        line_with(&text, "# b"),
        "failover chain loops: b -> c -> b",
    );
    // A chain without a loop is fine.
    let c = ok(&three("failover = \"b\"", "failover = \"c\"", ""));
    assert_eq!(
        c.backends
            .iter()
            .map(|b| b.failover_index)
            .collect::<Vec<_>>(),
        [Some(1), Some(2), None]
    );
}

#[test]
fn when_all_down_failover_needs_a_failover_backend() {
    let text = config("", "when_all_down = \"failover\"", "");
    expect(
        &text,
        "backend[0].when_all_down",
        line_with(&text, "when_all_down"),
        "\"failover\" needs a backend to fail over to: add `failover = \"<other backend>\"`",
    );
    let c = ok(&three(
        "failover = \"b\"\nwhen_all_down = \"failover\"",
        "",
        "",
    ));
    assert_eq!(c.backends[0].when_all_down, WhenAllDown::Failover);
    let c = ok(&three("failover = \"b\"\nwhen_all_down = \"fail\"", "", ""));
    assert_eq!(c.backends[0].when_all_down, WhenAllDown::Fail);
}

#[test]
fn when_all_down_must_be_known() {
    let text = config("", "when_all_down = \"retry\"", "");
    expect(
        &text,
        "backend[0].when_all_down",
        line_with(&text, "retry"),
        "write one of \"fail\", \"failover\", \"try_all\"",
    );
    let text = config("", "when_all_down = \"TRY-ALL\"", "");
    expect(
        &text,
        "backend[0].when_all_down",
        line_with(&text, "TRY-ALL"),
        "did you mean \"try_all\"?",
    );
}

// ------------------------------------------------------------ breaker

#[test]
fn breaker_window_is_whole_seconds_up_to_a_minute() {
    for bad in ["1500ms", "61s", "500ms", "2m"] {
        let text = backend_table(&format!("[backend.breaker]\nwindow = \"{bad}\""));
        expect(
            &text,
            "backend[0].breaker.window",
            line_with(&text, "window"),
            "must be whole seconds from 1s to 60s",
        );
    }
    for good in ["1s", "60s", "1m"] {
        ok(&backend_table(&format!(
            "[backend.breaker]\nwindow = \"{good}\""
        )));
    }
}

#[test]
fn breaker_counts_at_least_one() {
    for key in ["min_calls", "half_open_calls"] {
        let text = backend_table(&format!("[backend.breaker]\n{key} = 0"));
        expect(
            &text,
            &format!("backend[0].breaker.{key}"),
            line_with(&text, key),
            "must be at least 1",
        );
    }
    let c = ok(&backend_table(
        "[backend.breaker]\nconsecutive_failures = 0",
    ));
    assert_eq!(c.backends[0].breaker.consecutive_failures, 0, "0 disables");
}

#[test]
fn breaker_rates_are_positive_shares() {
    for key in ["failure_rate", "slow_call_rate"] {
        for bad in ["0", "0.0", "1.01", "-0.5", "nan", "inf"] {
            let text = backend_table(&format!("[backend.breaker]\n{key} = {bad}"));
            expect(
                &text,
                &format!("backend[0].breaker.{key}"),
                line_with(&text, key),
                "must be greater than 0 and at most 1",
            );
        }
        ok(&backend_table(&format!("[backend.breaker]\n{key} = 0.01")));
    }
}

#[test]
fn jitters_are_shares_from_zero_to_one() {
    for (table, extra) in [("breaker", ""), ("health_check", "path = \"/\"\n")] {
        for bad in ["-0.1", "1.1", "nan"] {
            let text = backend_table(&format!("[backend.{table}]\n{extra}jitter = {bad}"));
            expect(
                &text,
                &format!("backend[0].{table}.jitter"),
                line_with(&text, "jitter"),
                "must be between 0.0 and 1.0",
            );
        }
        for good in ["0", "0.0", "1", "1.0"] {
            ok(&backend_table(&format!(
                "[backend.{table}]\n{extra}jitter = {good}"
            )));
        }
    }
}

#[test]
fn slow_call_duration_not_longer_than_the_backend_timeout() {
    let text =
        backend_table("timeout = \"1s\"\nconnect_timeout = \"250ms\"\n[backend.breaker]\nslow_call_duration = \"1001ms\"");
    expect(
        &text,
        "backend[0].breaker.slow_call_duration",
        line_with(&text, "slow_call_duration"),
        "slow_call_duration (1s 1ms) must not be longer than the backend's timeout (1s): \
         a call that outlives the deadline is a deadline failure",
    );
    let text = backend_table("[backend.breaker]\nslow_call_duration = \"16s\"");
    expect(
        &text,
        "backend[0].breaker.slow_call_duration",
        line_with(&text, "slow_call_duration"),
        "the backend's timeout (15s, the default)",
    );
    let c = ok(&backend_table(
        "timeout = \"1s\"\nconnect_timeout = \"250ms\"\n[backend.breaker]\nslow_call_duration = \"1s\"",
    ));
    assert_eq!(c.backends[0].breaker.slow_call_duration, secs(1));
}

#[test]
fn failure_statuses_are_server_errors() {
    let text = backend_table("[backend.breaker]\nfailure_statuses = [500, 404]");
    let e = expect(
        &text,
        "backend[0].breaker.failure_statuses[1]",
        line_with(&text, "failure_statuses"),
        "404 is a client error (4xx): 4xx answers are the client's mistake, not the node's",
    );
    assert!(e
        .to_string()
        .contains("list only server errors, 500 to 599"));
    for bad in ["200", "600", "-500", "70000"] {
        let text = backend_table(&format!("[backend.breaker]\nfailure_statuses = [{bad}]"));
        expect(
            &text,
            "backend[0].breaker.failure_statuses[0]",
            line_with(&text, "failure_statuses"),
            &format!("{bad} is not a server error status; list only 500 to 599"),
        );
    }
    let text = backend_table("[backend.breaker]\nfailure_statuses = [\n  500,\n  503,\n  500,\n]");
    expect(
        &text,
        "backend[0].breaker.failure_statuses[2]",
        line_with(&text, "failure_statuses") + 3,
        "status 500 is listed twice (also failure_statuses[0])",
    );
}

#[test]
fn open_for_max_not_shorter_than_open_for() {
    let text = backend_table("[backend.breaker]\nopen_for = \"10s\"\nopen_for_max = \"9s\"");
    expect(
        &text,
        "backend[0].breaker.open_for",
        line_with(&text, "open_for ="),
        "open_for (10s) must not be longer than open_for_max (9s)",
    );
    // Only open_for_max written: it is the one to change.
    let text = backend_table("[backend.breaker]\nopen_for_max = \"1s\"");
    expect(
        &text,
        "backend[0].breaker.open_for_max",
        line_with(&text, "open_for_max"),
        "open_for_max (1s) must not be shorter than open_for (5s, the default)",
    );
    // Only open_for written, beyond the default maximum.
    let text = backend_table("[backend.breaker]\nopen_for = \"2m\"");
    expect(
        &text,
        "backend[0].breaker.open_for",
        line_with(&text, "open_for"),
        "open_for (2m) must not be longer than open_for_max (1m, the default)",
    );
}

#[test]
fn breaker_can_be_disabled() {
    let c = ok(&backend_table("[backend.breaker]\nenabled = false"));
    assert!(!c.backends[0].breaker.enabled);
    let text = backend_table("[backend.breaker]\nenabled = \"no\"");
    expect(
        &text,
        "backend[0].breaker.enabled",
        line_with(&text, "enabled"),
        "expected a boolean",
    );
}

// ------------------------------------------------------- health_check

#[test]
fn health_check_path_is_required() {
    let text = backend_table("[backend.health_check]\ninterval = \"1s\"");
    expect(
        &text,
        "backend[0].health_check.path",
        line_with(&text, "[backend.health_check]"),
        "is required in [backend.health_check]",
    );
}

#[test]
fn health_check_path_must_be_a_path() {
    let text = backend_table("[backend.health_check]\npath = \"healthz\"");
    expect(
        &text,
        "backend[0].health_check.path",
        line_with(&text, "path ="),
        "must start with '/', e.g. path = \"/healthz\"",
    );
    let text = backend_table("[backend.health_check]\npath = \"/health check\"");
    expect(
        &text,
        "backend[0].health_check.path",
        line_with(&text, "path ="),
        "is not a valid request path",
    );
}

#[test]
fn health_check_timeout_shorter_than_interval() {
    let text =
        backend_table("[backend.health_check]\npath = \"/\"\ninterval = \"1s\"\ntimeout = \"1s\"");
    expect(
        &text,
        "backend[0].health_check.timeout",
        line_with(&text, "timeout"),
        "timeout (1s) must be shorter than interval (1s): a probe must end before the next one is due",
    );
    let text = backend_table("[backend.health_check]\npath = \"/\"\ninterval = \"500ms\"");
    expect(
        &text,
        "backend[0].health_check.interval",
        line_with(&text, "interval"),
        "interval (500ms) must be longer than timeout (1s, the default)",
    );
}

#[test]
fn health_check_thresholds_at_least_one() {
    for key in ["unhealthy_after", "healthy_after"] {
        let text = backend_table(&format!("[backend.health_check]\npath = \"/\"\n{key} = 0"));
        expect(
            &text,
            &format!("backend[0].health_check.{key}"),
            line_with(&text, key),
            "must be at least 1",
        );
    }
}

#[test]
fn expect_statuses_are_http_statuses() {
    let text = backend_table("[backend.health_check]\npath = \"/\"\nexpect_statuses = []");
    expect(
        &text,
        "backend[0].health_check.expect_statuses",
        line_with(&text, "expect_statuses"),
        "must list at least one status; remove the key to accept every 2xx",
    );
    for bad in ["99", "600"] {
        let text = backend_table(&format!(
            "[backend.health_check]\npath = \"/\"\nexpect_statuses = [200, {bad}]"
        ));
        expect(
            &text,
            "backend[0].health_check.expect_statuses[1]",
            line_with(&text, "expect_statuses"),
            &format!("{bad} is not an HTTP status; list statuses from 100 to 599"),
        );
    }
    let text = backend_table("[backend.health_check]\npath = \"/\"\nexpect_statuses = [200, 200]");
    expect(
        &text,
        "backend[0].health_check.expect_statuses[1]",
        line_with(&text, "expect_statuses"),
        "listed twice",
    );
    let c = ok(&backend_table(
        "[backend.health_check]\npath = \"/\"\nexpect_statuses = [100, 404, 599]",
    ));
    assert_eq!(
        c.backends[0].health_check.as_ref().unwrap().expect_statuses,
        [100, 404, 599]
    );
}

// -------------------------------------------------------------- retry

#[test]
fn retry_budget_percent_is_a_percentage() {
    let text = backend_table("[backend.retry]\nbudget_percent = 150");
    expect(
        &text,
        "backend[0].retry.budget_percent",
        line_with(&text, "budget_percent"),
        "must be a percentage from 0 to 100 (it is 150)",
    );
    let c = ok(&backend_table("[backend.retry]\nbudget_percent = 100"));
    assert_eq!(c.backends[0].retry.budget_percent, 100);
}

#[test]
fn retry_on_statuses_are_server_errors() {
    let text = backend_table("[backend.retry]\non_statuses = [502, 429]");
    expect(
        &text,
        "backend[0].retry.on_statuses[1]",
        line_with(&text, "on_statuses"),
        "429 is a client error (4xx): a 4xx answer would be the same from every node",
    );
    let text = backend_table("[backend.retry]\non_statuses = [302]");
    expect(
        &text,
        "backend[0].retry.on_statuses[0]",
        line_with(&text, "on_statuses"),
        "302 is not a server error status",
    );
}

#[test]
fn retry_backoff_shorter_than_the_backend_timeout() {
    let text = backend_table(
        "timeout = \"1s\"\nconnect_timeout = \"250ms\"\n[backend.retry]\nbackoff = \"1s\"",
    );
    expect(
        &text,
        "backend[0].retry.backoff",
        line_with(&text, "backoff"),
        "backoff (1s) must be shorter than the backend's timeout (1s)",
    );
    let text = backend_table("[backend.retry]\nbackoff = \"20s\"");
    expect(
        &text,
        "backend[0].retry.backoff",
        line_with(&text, "backoff"),
        "the backend's timeout (15s, the default)",
    );
}

#[test]
fn negative_counts_in_new_tables_name_the_key() {
    let text = backend_table("[backend.retry]\nmax_retries = -1");
    expect(
        &text,
        "backend[0].retry.max_retries",
        line_with(&text, "max_retries"),
        "-1",
    );
}

// ----------------------------------------------------------- shedding

#[test]
fn failover_max_share_is_a_positive_share() {
    let c = ok(&backend_table("failover_max_share = 0.25"));
    assert_eq!(c.backends[0].failover_max_share, 0.25);
    for bad in ["0", "1.5", "-0.5", "nan"] {
        let text = backend_table(&format!("failover_max_share = {bad}"));
        expect(
            &text,
            "backend[0].failover_max_share",
            line_with(&text, "failover_max_share"),
            "must be greater than 0 and at most 1",
        );
    }
}

#[test]
fn shedding_shares_are_positive() {
    for key in ["sheddable", "normal"] {
        for bad in ["0", "1.5", "-1"] {
            let text = backend_table(&format!("[backend.shedding]\n{key} = {bad}"));
            expect(
                &text,
                &format!("backend[0].shedding.{key}"),
                line_with(&text, key),
                "must be greater than 0 and at most 1",
            );
        }
    }
}

#[test]
fn sheddable_not_above_normal() {
    let text = backend_table("[backend.shedding]\nsheddable = 0.9\nnormal = 0.6");
    expect(
        &text,
        "backend[0].shedding.sheddable",
        line_with(&text, "sheddable ="),
        "sheddable (0.9) must not be more than normal (0.6): sheddable requests are shed first",
    );
    let text = backend_table("[backend.shedding]\nsheddable = 0.9");
    expect(
        &text,
        "backend[0].shedding.sheddable",
        line_with(&text, "sheddable ="),
        "normal (0.8, the default)",
    );
    let text = backend_table("[backend.shedding]\nnormal = 0.4");
    expect(
        &text,
        "backend[0].shedding.normal",
        line_with(&text, "normal ="),
        "normal (0.4) must not be less than sheddable (0.5, the default)",
    );
    let c = ok(&backend_table(
        "[backend.shedding]\nsheddable = 0.7\nnormal = 0.7",
    ));
    assert_eq!(c.backends[0].shedding.sheddable, 0.7);
}

// ------------------------------------------------------------- routes

#[test]
fn route_priority_must_be_known() {
    let text = config("", "", "priority = \"high\"");
    expect(
        &text,
        "route[0].priority",
        line_with(&text, "priority"),
        "\"high\" is not a priority; write one of \"critical\", \"normal\", \"sheddable\"",
    );
    let text = config("", "", "priority = \"Critical\"");
    expect(
        &text,
        "route[0].priority",
        line_with(&text, "priority"),
        "did you mean \"critical\"?",
    );
}

#[test]
fn breaker_class_is_a_plain_name() {
    let c = ok(&config("", "", "breaker_class = \"payments\""));
    assert_eq!(c.routes[0].breaker_class.as_deref(), Some("payments"));
    for reserved in ["safe", "unsafe"] {
        let c = ok(&config("", "", &format!("breaker_class = \"{reserved}\"")));
        assert_eq!(c.routes[0].breaker_class.as_deref(), Some(reserved));
    }
    let text = config("", "", "breaker_class = \"pay ments\"");
    expect(
        &text,
        "route[0].breaker_class",
        line_with(&text, "breaker_class"),
        "breaker class \"pay ments\" contains ' '; use only letters, digits",
    );
    let text = config("", "", "breaker_class = \"\"");
    expect(
        &text,
        "route[0].breaker_class",
        line_with(&text, "breaker_class"),
        "breaker class must not be empty",
    );
}

// ------------------------------------------------------------ clamping

#[test]
fn slow_call_duration_default_is_clamped_to_the_timeout() {
    let c = ok(&config(
        "",
        "timeout = \"1s\"\nconnect_timeout = \"250ms\"",
        "",
    ));
    assert_eq!(c.backends[0].breaker.slow_call_duration, secs(1));
    let c = ok(&backend_table(
        "timeout = \"1s\"\nconnect_timeout = \"250ms\"\n[backend.breaker]\nmin_calls = 3",
    ));
    assert_eq!(c.backends[0].breaker.slow_call_duration, secs(1));
    assert_eq!(c.backends[0].breaker.min_calls, 3);
    let c = ok(&config("", "timeout = \"3s\"", ""));
    assert_eq!(c.backends[0].breaker.slow_call_duration, secs(2));
}

#[test]
fn retry_backoff_default_is_clamped_below_a_tiny_timeout() {
    let tiny = "timeout = \"10ms\"\nconnect_timeout = \"5ms\"\nqueue_timeout = \"5ms\"";
    let c = ok(&config("", tiny, ""));
    assert_eq!(c.backends[0].retry.backoff, ms(5));
    assert_eq!(c.backends[0].breaker.slow_call_duration, ms(10));
    let c = ok(&backend_table(&format!(
        "{tiny}\n[backend.retry]\nmax_retries = 1"
    )));
    assert_eq!(c.backends[0].retry.backoff, ms(5));
    // The smallest possible timeout still gets a non-zero backoff.
    let c = ok(&config(
        "",
        "timeout = \"2ns\"\nconnect_timeout = \"1ns\"\nqueue_timeout = \"1ns\"",
        "",
    ));
    assert_eq!(c.backends[0].retry.backoff, Duration::from_nanos(1));
    let c = ok(&config(
        "",
        "timeout = \"20ms\"\nconnect_timeout = \"5ms\"\nqueue_timeout = \"5ms\"",
        "",
    ));
    assert_eq!(c.backends[0].retry.backoff, ms(10));
}

// ---------------------------------------------------------- shipped files

#[test]
fn demo_config_has_its_resilience_settings() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/demo.toml");
    let c = load(&path).unwrap();
    let app = c.backend("app").unwrap();
    assert_eq!(
        app.breaker,
        BreakerConfig {
            window: secs(5),
            min_calls: 5,
            failure_rate: 0.5,
            slow_call_duration: ms(400),
            consecutive_failures: 3,
            open_for: secs(2),
            open_for_max: secs(10),
            half_open_calls: 1,
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    );
    assert_eq!(app.retry.max_retries, 2);
    assert_eq!(app.retry.backoff, ms(10));
    let priority = |name: &str| c.routes.iter().find(|r| r.name == name).unwrap().priority;
    assert_eq!(priority("reads"), Priority::Normal);
    assert_eq!(priority("writes"), Priority::Critical);
}

#[test]
fn reference_config_shows_every_table() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/levee.toml");
    let c = load(&path).unwrap();
    let app = c.backend("app").unwrap();
    assert_eq!(app.failover.as_deref(), Some("app-standby"));
    assert_eq!(app.failover_index, Some(1));
    assert_eq!(app.when_all_down, WhenAllDown::Failover);
    assert!(app.health_check.is_some());
    assert_eq!(c.routes[0].priority, Priority::Critical);
    assert!(c.routes[0].breaker_class.is_some());
}
