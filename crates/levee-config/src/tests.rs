#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

mod limits;
mod policy;
mod tls;

/// A minimal valid config with room for extra keys in each table.
fn config(server: &str, backend: &str, route: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:8080\"\n{server}\n\n\
         [[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:9001\"]\n{backend}\n\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n{route}\n"
    )
}

fn ok(text: &str) -> Config {
    match parse(text, "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("expected success, got: {e}\n--- text ---\n{text}"),
    }
}

fn err(text: &str) -> ConfigError {
    match parse(text, "t.toml") {
        Ok(c) => panic!("expected an error, got {c:?}\n--- text ---\n{text}"),
        Err(e) => e,
    }
}

/// 1-based line of the only line containing `needle`.
fn line_with(text: &str, needle: &str) -> usize {
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "{needle:?} must be on exactly one line of:\n{text}"
    );
    hits[0]
}

/// Asserts the error's key, that its line holds `at_line`, and that the
/// message mentions `says`.
fn expect(text: &str, key: &str, at_line: usize, says: &str) -> ConfigError {
    let e = err(text);
    assert_eq!(e.key(), Some(key), "key of: {e}");
    assert_eq!(e.line(), Some(at_line), "line of: {e}");
    assert!(
        e.to_string().contains(says),
        "{e:?} should mention {says:?}: {e}"
    );
    assert!(
        e.to_string()
            .starts_with(&format!("t.toml:{at_line}: {key}: ")),
        "display prefix of: {e}"
    );
    e
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn node(s: &str) -> NodeAddr {
    NodeAddr::Ip(addr(s))
}

// ---------------------------------------------------------------- good input

#[test]
fn defaults_are_applied() {
    let c = ok(&config("", "", ""));
    assert_eq!(c.server.listen, addr("127.0.0.1:8080"));
    assert_eq!(c.server.header_read_timeout, secs(10));
    assert_eq!(c.server.idle_timeout, secs(60));
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.shutdown_grace, secs(30));
    assert_eq!(c.server.max_header_bytes, 65_536);
    assert_eq!(c.server.max_uri_bytes, 8192);
    assert_eq!(c.server.max_headers, 100);
    assert_eq!(c.server.max_request_body_bytes, Some(1 << 30));
    assert_eq!(c.server.h2.max_concurrent_streams, 100);
    assert_eq!(c.server.h2.max_pending_accept_reset_streams, 20);
    assert_eq!(c.server.h2.max_local_error_reset_streams, 1024);
    assert_eq!(c.server.h2.keep_alive_interval, secs(20));
    assert_eq!(c.server.h2.keep_alive_timeout, secs(20));
    assert_eq!(c.admin.listen, addr("127.0.0.1:9901"));
    assert_eq!(c.admin.heartbeat_stale_after, secs(2));

    let b = &c.backends[0];
    assert_eq!(b.name, "app");
    assert_eq!(b.nodes, vec![node("127.0.0.1:9001")]);
    assert_eq!(b.connect_timeout, secs(1));
    assert_eq!(b.timeout, secs(15));
    assert_eq!(b.body_idle_timeout, secs(30));
    assert_eq!(b.tunnel_idle_timeout, secs(300));
    assert_eq!(b.max_in_flight, 1024);
    assert_eq!(b.max_queue, 128);
    assert_eq!(b.queue_timeout, ms(100));
    assert_eq!(b.pool_idle_timeout, secs(90));
    assert_eq!(b.pool_max_idle_per_node, 1024);

    let r = &c.routes[0];
    assert_eq!(r.name, "route-0");
    assert_eq!(r.path_prefix, "/");
    assert_eq!(r.methods, None);
    assert_eq!(r.host, None);
    assert_eq!(r.backend, "app");
    assert_eq!(r.backend_index, 0);
    assert_eq!(r.timeout, secs(15));
    assert_eq!(r.max_in_flight, None);
    assert_eq!(r.max_queue, 128);
    assert_eq!(r.queue_timeout, ms(100));
    assert_eq!(r.max_request_body_bytes, Some(1 << 30));
    assert_eq!(r.tunnel_idle_timeout, secs(300));
    assert_eq!(r.max_tunnels, 1024);
    assert_eq!(c.origin, "t.toml");
}

const FULL: &str = r#"[server]
listen = "127.0.0.1:8080"
header_read_timeout = "10s"
idle_timeout = "60s"
max_connections = 10000
shutdown_grace = "30s"

[admin]
listen = "127.0.0.1:9901"

[[backend]]
name = "app"
nodes = ["127.0.0.1:9001", "127.0.0.1:9002"]
connect_timeout = "500ms"
timeout = "5s"
max_in_flight = 64
max_queue = 32
queue_timeout = "100ms"

[[backend]]
name = "search.v2"
nodes = ["[::1]:9100"]

[[route]]
name = "writes"
path_prefix = "/api/"
methods = ["POST", "PUT", "PATCH", "DELETE"]
host = "API.Example.com"
backend = "app"
timeout = "2s"
max_in_flight = 16

[[route]]
path_prefix = "/search"
backend = "search.v2"

[[route]]
path_prefix = "/"
backend = "app"
"#;

#[test]
fn full_example() {
    let c = ok(FULL);
    assert_eq!(c.backends.len(), 2);
    let app = c.backend("app").unwrap();
    assert_eq!(
        app.nodes,
        vec![node("127.0.0.1:9001"), node("127.0.0.1:9002")]
    );
    assert_eq!(app.connect_timeout, ms(500));
    assert_eq!(app.timeout, secs(5));
    assert_eq!(app.max_in_flight, 64);
    assert_eq!(app.max_queue, 32);
    assert_eq!(
        c.backend("search.v2").unwrap().nodes,
        vec![node("[::1]:9100")]
    );
    assert!(c.backend("nope").is_none());

    let writes = &c.routes[0];
    assert_eq!(writes.name, "writes");
    assert_eq!(
        writes.methods,
        Some(vec![
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE
        ])
    );
    assert_eq!(writes.host.as_deref(), Some("api.example.com"));
    assert_eq!(writes.timeout, secs(2));
    assert_eq!(writes.max_in_flight, Some(16));
    // Not set on the route: inherited from the backend.
    assert_eq!(writes.max_queue, 32);
    assert_eq!(writes.queue_timeout, ms(100));

    assert_eq!(c.routes[1].name, "route-1");
    assert_eq!(c.routes[1].backend_index, 1);
    assert_eq!(c.routes[1].timeout, secs(15));
    assert_eq!(c.routes[2].name, "route-2");
    assert_eq!(c.routes[2].backend_index, 0);
    assert_eq!(c.routes[2].timeout, secs(5));
}

#[test]
fn shipped_config_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = load(&path) {
                panic!("{e}");
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 2,
        "expected levee.toml and demo.toml in {}",
        dir.display()
    );
}

#[test]
fn demo_config_matches_the_demo() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/demo.toml");
    let c = load(&path).unwrap();
    assert_eq!(c.server.listen, addr("127.0.0.1:18080"));
    assert_eq!(c.admin.listen, addr("127.0.0.1:19901"));
    let app = c.backend("app").unwrap();
    assert_eq!(app.nodes.len(), 3);
    assert_eq!(app.connect_timeout, ms(250));
    assert_eq!(app.timeout, secs(1));
    assert_eq!((app.max_in_flight, app.max_queue), (32, 16));
    assert_eq!(app.queue_timeout, ms(50));
    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["writes", "reads"]);
    let writes = &c.routes[0];
    assert_eq!(writes.timeout, ms(500));
    assert_eq!(writes.max_in_flight, Some(8));
    assert_eq!((writes.max_queue, writes.queue_timeout), (4, ms(50)));
    assert_eq!(c.routes[1].path_prefix, "/");
}

#[test]
fn version_is_fnv1a_of_the_text() {
    let text = config("", "", "");
    let a = ok(&text);
    assert_eq!(a.version.len(), 16);
    assert!(a.version.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(a.version, ok(&text).version, "same text, same version");
    let b = ok(&format!("{text}# a comment changes the version\n"));
    assert_ne!(a.version, b.version);
    // Known FNV-1a 64 vectors.
    assert_eq!(fingerprint(""), "cbf29ce484222325");
    assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("levee-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, config("", "", "")).unwrap();
    let c = load(&good).unwrap();
    assert_eq!(c.origin, good.display().to_string());

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, config("max_connections = 0", "", "")).unwrap();
    let e = load(&bad).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:3: ", bad.display())),
        "{e}"
    );

    let missing = dir.join("missing.toml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("missing.toml"), "{e}");
    assert_eq!(e.origin(), missing.display().to_string());
    assert_eq!(e.line(), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------- syntax and shape errors

#[test]
fn syntax_error_has_its_line() {
    let text = config("idle_timeout = ", "", "");
    let e = err(&text);
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.line(), Some(line_with(&text, "idle_timeout")));
    assert!(e.to_string().starts_with("t.toml:3: invalid TOML"), "{e}");
}

#[test]
fn duplicate_key_is_a_syntax_error_with_line() {
    let text = config("", "name = \"again\"", "");
    let e = err(&text);
    assert_eq!(e.line(), Some(line_with(&text, "again")), "{e}");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let text = config("", "max_inflight = 3", "");
    let e = expect(
        &text,
        "backend[0].max_inflight",
        line_with(&text, "max_inflight"),
        "unknown field `max_inflight`",
    );
    assert!(matches!(e, ConfigError::Shape { .. }));
    // serde's list of valid keys is kept: it shows the fix.
    assert!(e.to_string().contains("`max_in_flight`"), "{e}");
}

#[test]
fn unknown_table_is_rejected_with_its_line() {
    let text = format!("{}\n[tls]\ncert = \"x\"\n", config("", "", ""));
    expect(
        &text,
        "tls",
        line_with(&text, "[tls]"),
        "unknown field `tls`",
    );
}

#[test]
fn bad_duration_string_is_rejected_with_its_line() {
    let text = config("", "", "timeout = \"fast\"");
    expect(
        &text,
        "route[0].timeout",
        line_with(&text, "fast"),
        "invalid duration \"fast\"",
    );
}

#[test]
fn duration_must_be_a_string() {
    let text = config("shutdown_grace = 30", "", "");
    expect(
        &text,
        "server.shutdown_grace",
        line_with(&text, "shutdown_grace"),
        "expected a duration string such as \"500ms\"",
    );
}

#[test]
fn negative_count_is_rejected_with_its_line() {
    let text = config("", "max_queue = -1", "");
    expect(
        &text,
        "backend[0].max_queue",
        line_with(&text, "max_queue"),
        "-1",
    );
}

#[test]
fn single_bracket_backend_gets_a_hint() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n\n[backend]\nname = \"app\"\n";
    expect(text, "backend", 4, "write [[backend]] (double brackets)");
}

#[test]
fn inline_tables_are_located_too() {
    let text = "server = { listen = \"127.0.0.1:8080\", max_connections = 0 }\n";
    expect(text, "server.max_connections", 1, "must be at least 1");
}

// ------------------------------------------------------- [server], [admin]

#[test]
fn server_table_is_required() {
    let e = err("[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:9001\"]\n");
    assert_eq!(e.key(), Some("server"));
    assert!(e.to_string().contains("[server] table is required"), "{e}");
}

#[test]
fn server_listen_is_required_and_points_at_the_header() {
    let text = "# comment\n[server]\nidle_timeout = \"5s\"\n";
    expect(text, "server.listen", 2, "is required");
}

#[test]
fn listen_must_be_ip_port() {
    let text = config("", "", "").replace("127.0.0.1:8080", "localhost:8080");
    expect(
        &text,
        "server.listen",
        2,
        "not an ip:port address; write e.g. \"127.0.0.1:8080\" (host names are not supported yet)",
    );
}

#[test]
fn tunnel_keys_inherit_and_are_checked() {
    let c = ok(&config(
        "",
        "tunnel_idle_timeout = \"1m\"",
        "max_tunnels = 8",
    ));
    assert_eq!(
        c.routes[0].tunnel_idle_timeout,
        secs(60),
        "from the backend"
    );
    assert_eq!(c.routes[0].max_tunnels, 8);
    let c = ok(&config(
        "",
        "tunnel_idle_timeout = \"1m\"",
        "tunnel_idle_timeout = \"10s\"",
    ));
    assert_eq!(c.routes[0].tunnel_idle_timeout, secs(10), "the route's own");
    let text = config("", "", "max_tunnels = 0");
    expect(
        &text,
        "route[0].max_tunnels",
        line_with(&text, "max_tunnels"),
        "must be at least 1",
    );
}

#[test]
fn zero_durations_are_rejected() {
    let cases = [
        ("header_read_timeout", "server"),
        ("idle_timeout", "server"),
        ("shutdown_grace", "server"),
        ("connect_timeout", "backend"),
        ("timeout", "backend"),
        ("body_idle_timeout", "backend"),
        ("tunnel_idle_timeout", "backend"),
        ("queue_timeout", "backend"),
        ("pool_idle_timeout", "backend"),
        ("timeout", "route"),
        ("queue_timeout", "route"),
        ("tunnel_idle_timeout", "route"),
    ];
    for (key, table) in cases {
        let line = format!("{key} = \"0s\"");
        let text = match table {
            "server" => config(&line, "", ""),
            "backend" => config("", &line, ""),
            _ => config("", "", &line),
        };
        let path = match table {
            "server" => format!("server.{key}"),
            other => format!("{other}[0].{key}"),
        };
        expect(
            &text,
            &path,
            line_with(&text, "\"0s\""),
            "must be greater than zero",
        );
    }
    let text = format!(
        "{}\n[admin]\nheartbeat_stale_after = \"0ms\"\n",
        config("", "", "")
    );
    expect(
        &text,
        "admin.heartbeat_stale_after",
        line_with(&text, "0ms"),
        "greater than zero",
    );
}

#[test]
fn max_connections_at_least_one() {
    let text = config("max_connections = 0", "", "");
    expect(&text, "server.max_connections", 3, "must be at least 1");
    ok(&config("max_connections = 1", "", ""));
}

#[test]
fn workers_default_to_one_per_core_and_are_bounded() {
    assert_eq!(ok(&config("", "", "")).server.workers, 0);
    assert_eq!(ok(&config("workers = 3", "", "")).server.workers, 3);
    let text = config("workers = 5000", "", "");
    expect(&text, "server.workers", 3, "must be at most 1024");
}

#[test]
fn max_header_bytes_at_least_1024() {
    let text = config("max_header_bytes = 1023", "", "");
    expect(&text, "server.max_header_bytes", 3, "must be at least 1024");
    let c = ok(&config("max_header_bytes = 1024", "", ""));
    assert_eq!(c.server.max_header_bytes, 1024);
}

#[test]
fn max_uri_bytes_is_bounded_and_fits_in_the_head() {
    let c = ok(&config("max_uri_bytes = 256", "", ""));
    assert_eq!(c.server.max_uri_bytes, 256);
    let text = config("max_uri_bytes = 255", "", "");
    expect(&text, "server.max_uri_bytes", 3, "must be at least 256");
    let text = config("max_uri_bytes = 65535", "", "");
    expect(
        &text,
        "server.max_uri_bytes",
        3,
        "must be at most 65534 (hyper answers longer request targets itself",
    );
    // A target longer than the head limit could never be answered with 414.
    let text = config(
        "max_header_bytes = 4096
max_uri_bytes = 8192",
        "",
        "",
    );
    expect(
        &text,
        "server.max_uri_bytes",
        line_with(&text, "max_uri_bytes"),
        "8192 is more than max_header_bytes (4096)",
    );
    // Left at its default, it shrinks to fit a smaller head limit.
    let c = ok(&config("max_header_bytes = 4096", "", ""));
    assert_eq!(c.server.max_uri_bytes, 4096);
    let c = ok(&config(
        "max_header_bytes = 4096
max_uri_bytes = 4096",
        "",
        "",
    ));
    assert_eq!(c.server.max_uri_bytes, 4096);
}

#[test]
fn max_headers_is_bounded() {
    assert_eq!(
        ok(&config("max_headers = 32", "", "")).server.max_headers,
        32
    );
    assert_eq!(
        ok(&config("max_headers = 1000", "", "")).server.max_headers,
        1000
    );
    let text = config("max_headers = 31", "", "");
    expect(&text, "server.max_headers", 3, "must be at least 32");
    let text = config("max_headers = 1001", "", "");
    expect(&text, "server.max_headers", 3, "must be at most 1000");
    let text = config("max_headers = -1", "", "");
    expect(&text, "server.max_headers", 3, "-1");
}

#[test]
fn h2_limits_are_read_and_bounded() {
    let c = ok(&config(
        "h2_max_concurrent_streams = 8\nh2_max_pending_accept_reset_streams = 5\n\
         h2_max_local_error_reset_streams = 50\nh2_keep_alive_interval = \"1s\"\n\
         h2_keep_alive_timeout = \"500ms\"",
        "",
        "",
    ));
    assert_eq!(c.server.h2.max_concurrent_streams, 8);
    assert_eq!(c.server.h2.max_pending_accept_reset_streams, 5);
    assert_eq!(c.server.h2.max_local_error_reset_streams, 50);
    assert_eq!(c.server.h2.keep_alive_interval, secs(1));
    assert_eq!(c.server.h2.keep_alive_timeout, ms(500));
    for key in [
        "h2_max_concurrent_streams",
        "h2_max_pending_accept_reset_streams",
        "h2_max_local_error_reset_streams",
    ] {
        let text = config(&format!("{key} = 0"), "", "");
        expect(&text, &format!("server.{key}"), 3, "must be at least 1");
    }
    for key in ["h2_keep_alive_interval", "h2_keep_alive_timeout"] {
        let text = config(&format!("{key} = \"0s\""), "", "");
        expect(&text, &format!("server.{key}"), 3, "greater than zero");
    }
}

#[test]
fn body_limits_default_from_the_server_and_zero_means_none() {
    let c = ok(&config("max_request_body_bytes = 1048576", "", ""));
    assert_eq!(c.server.max_request_body_bytes, Some(1_048_576));
    assert_eq!(c.routes[0].max_request_body_bytes, Some(1_048_576));

    let c = ok(&config("max_request_body_bytes = 0", "", ""));
    assert_eq!(c.server.max_request_body_bytes, None);
    assert_eq!(c.routes[0].max_request_body_bytes, None, "inherited");

    let c = ok(&config(
        "max_request_body_bytes = 0",
        "",
        "max_request_body_bytes = 1024",
    ));
    assert_eq!(c.routes[0].max_request_body_bytes, Some(1024));
    let c = ok(&config("", "", "max_request_body_bytes = 0"));
    assert_eq!(c.server.max_request_body_bytes, Some(1 << 30));
    assert_eq!(c.routes[0].max_request_body_bytes, None);

    let text = config("", "", "max_request_body_bytes = -5");
    expect(
        &text,
        "route[0].max_request_body_bytes",
        line_with(&text, "max_request_body_bytes"),
        "-5",
    );
    let text = config("max_request_body_bytes = \"1MiB\"", "", "");
    expect(&text, "server.max_request_body_bytes", 3, "invalid type");
}

#[test]
fn heartbeat_stale_after_at_least_200ms() {
    let base = config("", "", "");
    let text = format!("{base}\n[admin]\nheartbeat_stale_after = \"199ms\"\n");
    expect(
        &text,
        "admin.heartbeat_stale_after",
        line_with(&text, "199ms"),
        "must be at least 200ms",
    );
    let c = ok(&format!(
        "{base}\n[admin]\nheartbeat_stale_after = \"200ms\"\n"
    ));
    assert_eq!(c.admin.heartbeat_stale_after, ms(200));
    assert_eq!(
        c.admin.listen,
        addr("127.0.0.1:9901"),
        "admin.listen keeps its default"
    );
}

#[test]
fn log_access_targets() {
    let base = config("", "", "");
    assert_eq!(ok(&base).log.access, AccessTarget::Off, "off by default");
    let c = ok(&format!(
        "{base}\n[log]\naccess = \"stdout\"\nformat = \"json\"\n"
    ));
    assert_eq!(c.log.access, AccessTarget::Stdout);
    let c = ok(&format!(
        "{base}\n[log]\naccess = \"/var/log/levee/access.log\"\n"
    ));
    assert_eq!(
        c.log.access,
        AccessTarget::File("/var/log/levee/access.log".into())
    );
    let text = format!("{base}\n[log]\naccess = \"\"\n");
    expect(&text, "log.access", line_with(&text, "access"), "stdout");
}

#[test]
fn log_level_and_format_of_levees_own_log() {
    let base = config("", "", "");
    let c = ok(&base);
    assert_eq!(c.log.level, "info", "level defaults to info");
    assert_eq!(c.log.format, LogFormat::Pretty, "format defaults to pretty");
    let c = ok(&format!(
        "{base}\n[log]\nlevel = \"warn,levee_proxy::nodes=debug\"\nformat = \"json\"\n"
    ));
    assert_eq!(c.log.level, "warn,levee_proxy::nodes=debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(
        ok(&format!("{base}\n[log]\nlevel = \"OFF\"\n")).log.level,
        "OFF"
    );

    let text = format!("{base}\n[log]\nformat = \"text\"\n");
    expect(
        &text,
        "log.format",
        line_with(&text, "text"),
        "\"pretty\" or \"json\"",
    );
    for bad in [
        "",
        "loud",
        "levee_proxy=",
        "=debug",
        "info,,debug",
        "a b=info",
    ] {
        let text = format!("{base}\n[log]\nlevel = \"{bad}\"\n");
        expect(
            &text,
            "log.level",
            line_with(&text, "level ="),
            "target=level",
        );
    }
}

#[test]
fn admin_listen_must_differ_from_server_listen() {
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:8080\"\n",
        config("", "", "")
    );
    expect(
        &text,
        "admin.listen",
        line_with(&text, "[admin]") + 1,
        "also server.listen",
    );
}

#[test]
fn server_listen_must_differ_from_default_admin_listen() {
    let text = config("", "", "").replace("127.0.0.1:8080", "127.0.0.1:9901");
    expect(&text, "server.listen", 2, "default admin.listen");
}

#[test]
fn port_zero_listeners_may_share_an_address() {
    let text = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config("", "", "").replace("127.0.0.1:8080", "127.0.0.1:0")
    );
    ok(&text);
}

// ---------------------------------------------------------------- backends

#[test]
fn at_least_one_backend() {
    let e = err("[server]\nlisten = \"127.0.0.1:8080\"\n");
    assert_eq!(e.key(), Some("backend"));
    assert!(e.to_string().contains("at least one [[backend]]"), "{e}");
}

#[test]
fn backend_name_is_required() {
    let text =
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[backend]]\nnodes = [\"127.0.0.1:9001\"]\n";
    expect(text, "backend[0].name", 4, "is required");
}

#[test]
fn backend_name_must_not_be_empty() {
    let text = config("", "", "").replace("name = \"app\"", "name = \"\"");
    expect(&text, "backend[0].name", 6, "must not be empty");
}

#[test]
fn backend_name_charset() {
    let text = config("", "", "").replace("\"app\"", "\"my app\"");
    expect(&text, "backend[0].name", 6, "only letters, digits");
}

#[test]
fn backend_names_are_unique() {
    let text = format!(
        "{}\n[[backend]]\nname = \"app\" # again\nnodes = [\"127.0.0.1:9002\"]\n",
        config("", "", "")
    );
    expect(
        &text,
        "backend[1].name",
        line_with(&text, "# again"),
        "duplicate backend name \"app\" (first defined at line 6)",
    );
}

#[test]
fn nodes_are_required() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[[backend]]\nname = \"app\"\n";
    expect(text, "backend[0].nodes", 3, "is required");
}

#[test]
fn nodes_must_not_be_empty() {
    let text = config("", "", "").replace("[\"127.0.0.1:9001\"]", "[]");
    expect(&text, "backend[0].nodes", 7, "at least one node");
}

#[test]
fn nodes_are_ip_port_or_host_port() {
    let text = config("", "", "").replace(
        "[\"127.0.0.1:9001\"]",
        "[\"127.0.0.1:9001\", \"App-1.Internal:9001\", \"web.:80\", \"[::1]:9002\"]",
    );
    let c = ok(&text);
    let b = &c.backends[0];
    assert_eq!(
        b.nodes,
        vec![
            node("127.0.0.1:9001"),
            NodeAddr::Name {
                host: "app-1.internal".into(),
                port: 9001
            },
            NodeAddr::Name {
                host: "web.".into(),
                port: 80
            },
            node("[::1]:9002"),
        ]
    );
    assert_eq!(b.nodes[1].to_string(), "app-1.internal:9001");
    assert_eq!(b.dns_refresh, secs(5), "the default refresh");
    assert_eq!(
        ok(&config("", "dns_refresh = \"30s\"", "")).backends[0].dns_refresh,
        secs(30)
    );
}

#[test]
fn a_node_needs_a_port_and_a_plain_host() {
    for bad in [
        "app-1.internal",
        "app-1.internal:99999",
        "app 1:80",
        "app..internal:80",
        "http://app:80",
        "1.2.3.999:80",
        ":80",
    ] {
        let text = config("", "", "").replace(
            "[\"127.0.0.1:9001\"]",
            &format!("[\n  \"127.0.0.1:9001\",\n  \"{bad}\",\n]"),
        );
        expect(
            &text,
            "backend[0].nodes[1]",
            line_with(&text, &format!("\"{bad}\"")),
            "is not an ip:port or host:port address",
        );
    }
}

#[test]
fn dns_refresh_has_a_floor() {
    let text = config("", "dns_refresh = \"10ms\"", "");
    expect(
        &text,
        "backend[0].dns_refresh",
        line_with(&text, "dns_refresh"),
        "must be at least 100ms",
    );
}

#[test]
fn nodes_must_not_repeat() {
    let text = config("", "", "").replace(
        "[\"127.0.0.1:9001\"]",
        "[\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9001\"]",
    );
    expect(
        &text,
        "backend[0].nodes[2]",
        7,
        "listed twice (also nodes[0])",
    );
}

#[test]
fn backend_max_in_flight_at_least_one() {
    let text = config("", "max_in_flight = 0", "");
    let e = expect(&text, "backend[0].max_in_flight", 8, "must be at least 1");
    assert_eq!(
        e.to_string(),
        "t.toml:8: backend[0].max_in_flight: must be at least 1 \
         (it bounds requests in flight to this backend)"
    );
}

#[test]
fn zero_queue_and_zero_idle_pool_are_allowed() {
    let c = ok(&config("", "max_queue = 0\npool_max_idle_per_node = 0", ""));
    assert_eq!(c.backends[0].max_queue, 0);
    assert_eq!(c.backends[0].pool_max_idle_per_node, 0);
    assert_eq!(c.routes[0].max_queue, 0, "inherited by the route");
}

#[test]
fn backend_connect_timeout_shorter_than_timeout() {
    let text = config("", "timeout = \"1s\"\nconnect_timeout = \"1s\"", "");
    expect(
        &text,
        "backend[0].connect_timeout",
        line_with(&text, "connect_timeout"),
        "connect_timeout (1s) must be shorter than timeout (1s)",
    );
}

#[test]
fn backend_queue_timeout_shorter_than_timeout() {
    let text = config("", "timeout = \"2s\"\nqueue_timeout = \"3s\"", "");
    expect(
        &text,
        "backend[0].queue_timeout",
        line_with(&text, "queue_timeout"),
        "must be shorter than timeout (2s)",
    );
}

#[test]
fn contradiction_with_a_default_blames_the_key_that_was_written() {
    // queue_timeout defaults to 100ms; connect_timeout is set below it too.
    let text = config("", "timeout = \"80ms\"\nconnect_timeout = \"50ms\"", "");
    expect(
        &text,
        "backend[0].timeout",
        line_with(&text, "timeout = \"80ms\""),
        "timeout (80ms) must be longer than queue_timeout (100ms, the default)",
    );
}

// ------------------------------------------------------------------ routes

#[test]
fn at_least_one_route() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:9001\"]\n";
    let e = err(text);
    assert_eq!(e.key(), Some("route"));
    assert!(e.to_string().contains("at least one [[route]]"), "{e}");
}

#[test]
fn route_names_are_unique() {
    let text = format!(
        "{}\n[[route]]\nname = \"a\"\npath_prefix = \"/a\"\nbackend = \"app\"\n\
         \n[[route]]\nname = \"a\" # again\npath_prefix = \"/b\"\nbackend = \"app\"\n",
        config("", "", "")
    );
    let first = text.lines().position(|l| l == "name = \"a\"").unwrap() + 1;
    expect(
        &text,
        "route[2].name",
        line_with(&text, "# again"),
        &format!("duplicate route name \"a\" (first defined at line {first})"),
    );
}

#[test]
fn explicit_route_name_may_clash_with_a_default_one() {
    let text = format!(
        "{}\n[[route]]\nname = \"route-0\"\npath_prefix = \"/b\"\nbackend = \"app\"\n",
        config("", "", "")
    );
    // route[0] has no name key: the first definition is its header line.
    expect(
        &text,
        "route[1].name",
        line_with(&text, "route-0"),
        "duplicate route name \"route-0\" (first defined at line 10)",
    );
}

#[test]
fn route_name_charset() {
    let text = config("", "", "name = \"writes/all\"");
    expect(
        &text,
        "route[0].name",
        line_with(&text, "writes/all"),
        "contains '/'",
    );
}

#[test]
fn path_prefix_is_required() {
    let text = config("", "", "").replace("path_prefix = \"/\"\n", "");
    expect(
        &text,
        "route[0].path_prefix",
        line_with(&text, "[[route]]"),
        "is required",
    );
}

#[test]
fn path_prefix_must_start_with_slash() {
    let text = config("", "", "").replace("path_prefix = \"/\"", "path_prefix = \"api\"");
    expect(
        &text,
        "route[0].path_prefix",
        line_with(&text, "path_prefix"),
        "must start with '/', e.g. path_prefix = \"/api\"",
    );
}

#[test]
fn methods_are_normalised() {
    let c = ok(&config("", "", "methods = [\"get\", \"Post\", \"PURGE\"]"));
    let methods = c.routes[0].methods.clone().unwrap();
    assert_eq!(methods[0], http::Method::GET);
    assert_eq!(methods[1], http::Method::POST);
    assert_eq!(methods[2].as_str(), "PURGE");
}

#[test]
fn methods_must_be_tokens() {
    let text = config("", "", "methods = [\"GET\", \"GET ALL\"]");
    expect(
        &text,
        "route[0].methods[1]",
        line_with(&text, "methods"),
        "not an HTTP method token",
    );
}

#[test]
fn methods_must_not_be_empty_or_repeat() {
    let text = config("", "", "methods = []");
    expect(
        &text,
        "route[0].methods",
        line_with(&text, "methods"),
        "at least one method",
    );
    let text = config("", "", "methods = [\"GET\", \"get\"]");
    expect(
        &text,
        "route[0].methods[1]",
        line_with(&text, "methods"),
        "listed twice",
    );
}

#[test]
fn host_is_lowercased_and_portless() {
    let c = ok(&config("", "", "host = \"Api.Example.COM\""));
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example.com"));
    let text = config("", "", "host = \"api.example.com:8080\"");
    expect(
        &text,
        "route[0].host",
        line_with(&text, "host"),
        "includes a port",
    );
    let text = config("", "", "host = \"\"");
    expect(&text, "route[0].host", line_with(&text, "host"), "is empty");
}

#[test]
fn route_backend_is_required() {
    let text = config("", "", "").replace("backend = \"app\"\n", "");
    expect(
        &text,
        "route[0].backend",
        line_with(&text, "[[route]]"),
        "is required",
    );
}

#[test]
fn route_backend_must_exist() {
    let text = format!(
        "{}\n[[backend]]\nname = \"search\"\nnodes = [\"127.0.0.1:9100\"]\n",
        config("", "", "")
    )
    .replace("backend = \"app\"", "backend = \"ap\"");
    expect(
        &text,
        "route[0].backend",
        line_with(&text, "\"ap\""),
        "no backend named \"ap\"; defined backends: app, search",
    );
}

#[test]
fn route_max_in_flight_at_least_one() {
    let text = config("", "", "max_in_flight = 0");
    expect(
        &text,
        "route[0].max_in_flight",
        line_with(&text, "max_in_flight"),
        "must be at least 1",
    );
}

#[test]
fn route_max_in_flight_not_above_backend() {
    let text = config("", "max_in_flight = 10", "max_in_flight = 11");
    expect(
        &text,
        "route[0].max_in_flight",
        line_with(&text, "= 11"),
        "could never fill",
    );
    let c = ok(&config("", "max_in_flight = 10", "max_in_flight = 10"));
    assert_eq!(c.routes[0].max_in_flight, Some(10));
}

#[test]
fn route_queue_timeout_shorter_than_route_timeout() {
    let text = config("", "", "timeout = \"1s\"\nqueue_timeout = \"1s\"");
    expect(
        &text,
        "route[0].queue_timeout",
        line_with(&text, "queue_timeout"),
        "must be shorter than timeout (1s)",
    );
}

#[test]
fn route_timeout_below_inherited_queue_timeout() {
    let text = config("", "queue_timeout = \"300ms\"", "timeout = \"200ms\"");
    expect(
        &text,
        "route[0].timeout",
        line_with(&text, "200ms"),
        "queue_timeout (300ms, inherited from backend \"app\")",
    );
}

#[test]
fn route_queue_timeout_above_inherited_timeout() {
    let text = config("", "timeout = \"2s\"", "queue_timeout = \"3s\"");
    expect(
        &text,
        "route[0].queue_timeout",
        line_with(&text, "3s"),
        "timeout (2s, inherited from backend \"app\")",
    );
}

#[test]
fn route_overrides_and_inherits() {
    let c = ok(&config(
        "",
        "timeout = \"3s\"\nmax_queue = 7\nqueue_timeout = \"70ms\"",
        "max_queue = 0\nqueue_timeout = \"10ms\"",
    ));
    let r = &c.routes[0];
    assert_eq!(r.timeout, secs(3));
    assert_eq!(r.max_queue, 0);
    assert_eq!(r.queue_timeout, ms(10));
}

#[test]
fn total_timeout_is_off_by_default_and_a_route_inherits_or_overrides_it() {
    let c = ok(&config("", "", ""));
    assert_eq!(c.backends[0].total_timeout, None);
    assert_eq!(c.routes[0].total_timeout, None);

    let c = ok(&config("", "total_timeout = \"30s\"", ""));
    assert_eq!(c.backends[0].total_timeout, Some(secs(30)));
    assert_eq!(c.routes[0].total_timeout, Some(secs(30)), "inherited");

    let c = ok(&config(
        "",
        "total_timeout = \"30s\"",
        "total_timeout = \"2s\"",
    ));
    assert_eq!(c.routes[0].total_timeout, Some(secs(2)), "the route's own");

    let text = config("", "", "total_timeout = \"0s\"");
    expect(
        &text,
        "route[0].total_timeout",
        line_with(&text, "total_timeout"),
        "greater than zero",
    );
}
