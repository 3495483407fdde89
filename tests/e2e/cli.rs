//! The `levee` binary: `check` on good and broken configs, SIGTERM, and `demo`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use levee_testkit::{AppNode, Behavior};

use crate::common::{free_addr, TempDir};

fn levee() -> Command {
    Command::new(env!("CARGO_BIN_EXE_levee"))
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

/// `levee check --config <file>`, run to its end.
fn check(file: &str) -> Output {
    levee().args(["check", "--config", file]).output().unwrap()
}

/// A testkit node on `rt`, for the tests that drive the binary from plain
/// threads.
fn app_node(rt: &tokio::runtime::Runtime, name: &str, behavior: Behavior) -> AppNode {
    rt.block_on(AppNode::start(name, behavior)).unwrap()
}

/// Free loopback addresses for levee's listener and its admin listener.
fn listen_and_admin() -> (SocketAddr, SocketAddr) {
    (free_addr(), free_addr())
}

#[test]
fn check_accepts_every_shipped_config_and_summarises_it() {
    for file in ["config/levee.toml", "config/demo.toml"] {
        let out = check(&repo(file));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok (version "), "{stdout}");
        assert!(stdout.contains("backend "), "{stdout}");
        assert!(stdout.contains("route "), "{stdout}");
    }
}

#[test]
fn check_resolves_node_names_and_warns_about_those_that_do_not_resolve() {
    let dir = TempDir::new("check-dns");
    let file = dir.path("names.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[backend]]\nname = \"app\"\n\
         nodes = [\"localhost:9001\", \"no-such-node.invalid:9001\"]\n\n\
         [[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
    )
    .unwrap();
    let out = check(file.to_str().unwrap());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a warning, not an error: {stderr}");
    assert!(
        stdout.contains("node localhost:9001 resolves to 127.0.0.1:9001"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: node no-such-node.invalid:9001 does not resolve"),
        "{stderr}"
    );
}

#[test]
fn check_names_file_line_and_key_of_a_broken_config() {
    let dir = TempDir::new("check");
    let file = dir.path("broken.toml");
    let mut f = std::fs::File::create(&file).unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:9001\"]\nmax_in_flight = 0\n\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"
    )
    .unwrap();
    drop(f);
    let out = check(file.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.toml:7"), "{stderr}");
    assert!(stderr.contains("backend[0].max_in_flight"), "{stderr}");

    let unknown = dir.path("unknown.toml");
    std::fs::write(
        &unknown,
        "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n",
    )
    .unwrap();
    let out = check(unknown.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown.toml:3"), "{stderr}");
    assert!(stderr.contains("lisen"), "{stderr}");
}

/// The real binary: SIGTERM stops accepting, lets the in-flight request
/// finish, and exits 0.
#[test]
fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = app_node(
        &rt,
        "slow",
        Behavior::Slow {
            delay: Duration::from_millis(800),
            body_bytes: 100,
        },
    );
    let (listen, admin) = listen_and_admin();
    let dir = TempDir::new("sigterm");
    let file = dir.path("levee.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{listen}\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"{admin}\"\n[[backend]]\nname = \"app\"\nnodes = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
            node.addr()
        ),
    )
    .unwrap();
    let mut levee = Running::start(&file, dir.path("levee.log"));
    let up = within(Duration::from_secs(10), || {
        std::net::TcpStream::connect(listen).is_ok()
    });
    assert!(up, "levee listens");
    let request = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    std::thread::sleep(Duration::from_millis(300));
    levee.signal("TERM");
    let answer = request.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let exited = within(Duration::from_secs(10), || !levee.alive());
    assert!(exited, "levee did not exit after SIGTERM");
    let status = levee.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "no longer listening"
    );
    drop(levee);
    drop(node);
}

/// A `levee run` child process and its log; killed if the test panics
/// before it exits, and then its log is printed.
struct Running {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Running {
    /// Without `RUST_LOG`, which would override the config's `log.level`.
    fn start(config: &Path, log: std::path::PathBuf) -> Self {
        let child = levee()
            .args(["run", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name}");
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("levee's log:\n{log}");
        }
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`: the status and the whole
/// answer as text, or `None` if the server could not be reached or read.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let limit = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, limit).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: levee\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

/// The admin `/status` document.
fn status_of(admin: SocketAddr) -> Option<serde_json::Value> {
    let (code, text) = http_get(admin, "/status")?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    (code == 200).then(|| serde_json::from_str(body).ok())?
}

/// Polls `check` every 50 ms for up to `limit`; true once it holds.
fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The real binary: SIGHUP reloads the file and levee keeps serving; a
/// file renamed into place is picked up by the watch; a broken file is
/// refused and the last good config stays; SIGTERM still exits 0.
#[test]
fn sighup_and_file_changes_reload_the_running_binary() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start = |name: &str| app_node(&rt, name, Behavior::Healthy { body_bytes: 4 });
    let (first, second) = (start("first"), start("second"));
    let (listen, admin) = listen_and_admin();
    let dir = TempDir::new("sighup");
    let file = dir.path("levee.toml");
    let head = format!(
        "[server]\nlisten = \"{listen}\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"{admin}\"\n[[backend]]\nname = \"app\"\nnodes = [\"{}\"]\n",
        first.addr()
    );
    let all = "[[route]]\nname = \"all\"\npath_prefix = \"/\"\nbackend = \"app\"\n";
    let one_route = format!("{head}{all}");
    // A second backend, and a route to it ahead of the catch-all.
    let two_routes = format!(
        "{head}[[backend]]\nname = \"second\"\nnodes = [\"{}\"]\n[[route]]\nname = \"v2\"\npath_prefix = \"/v2\"\nbackend = \"second\"\n{all}",
        second.addr()
    );
    let hash = |text: &str| levee_config::parse(text, "x").unwrap().version;
    std::fs::write(&file, &one_route).unwrap();
    let mut levee = Running::start(&file, dir.path("levee.log"));
    let answers = || http_get(listen, "/").map(|(code, _)| code) == Some(200);
    assert!(within(Duration::from_secs(10), answers), "levee answers");
    // A bounded wait, not an assumption: the admin listener is bound before
    // the workers, but this test must not depend on that order.
    assert!(
        within(Duration::from_secs(10), || status_of(admin).is_some()),
        "the admin listener answers /status: {:?}",
        http_get(admin, "/status")
    );
    let status = status_of(admin).unwrap();
    assert_eq!(status["config"]["hash"], hash(&one_route).as_str());
    assert_eq!(status["config"]["reloads"]["success"], 0);

    // SIGHUP: the same file again. levee lives on and counts a reload.
    levee.signal("HUP");
    let reloads =
        |result: &str| status_of(admin).and_then(|s| s["config"]["reloads"][result].as_u64());
    assert!(
        within(Duration::from_secs(5), || reloads("success") == Some(1)),
        "one reload after SIGHUP: {:?}",
        status_of(admin)
    );
    assert!(levee.alive(), "SIGHUP did not stop levee");
    assert!(answers(), "still answering after SIGHUP");
    let status = status_of(admin).unwrap();
    assert_eq!(status["config"]["hash"], hash(&one_route).as_str());
    assert_eq!(status["config"]["reloads"]["failure"], 0);

    // A new file renamed into place, as atomic writers do: the watch
    // reloads it.
    let temp = dir.path(".levee.toml.tmp");
    std::fs::write(&temp, &two_routes).unwrap();
    std::fs::rename(&temp, &file).unwrap();
    let now_live =
        |text: &str| status_of(admin).is_some_and(|s| s["config"]["hash"] == hash(text).as_str());
    assert!(
        within(Duration::from_secs(10), || now_live(&two_routes)),
        "the renamed file is live: {:?}",
        status_of(admin)
    );
    let status = status_of(admin).unwrap();
    assert_eq!(status["config"]["reloads"]["success"], 2);
    let routes: Vec<&str> = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(routes, ["v2", "all"]);
    let (code, v2) = http_get(listen, "/v2/x").unwrap();
    assert_eq!(code, 200, "{v2}");
    assert!(v2.contains("x-node: second"), "{v2}");

    // Garbage written in place: refused, the last good config stays.
    std::fs::write(&file, "[server\nlisten = \n").unwrap();
    assert!(
        within(Duration::from_secs(10), || reloads("failure") == Some(1)),
        "the broken file is refused: {:?}",
        status_of(admin)
    );
    let status = status_of(admin).unwrap();
    let config = &status["config"];
    assert_eq!(config["hash"], hash(&two_routes).as_str(), "old hash kept");
    assert_eq!(config["reloads"]["success"], 2);
    let error = config["last_reload_error"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{}:1", file.display())),
        "names file and line: {error}"
    );
    assert!(error.contains("invalid TOML"), "{error}");
    assert!(levee.alive());
    let (code, v2) = http_get(listen, "/v2/x").unwrap();
    assert_eq!(code, 200, "{v2}");
    assert!(v2.contains("x-node: second"), "{v2}");

    levee.signal("TERM");
    let exited = within(Duration::from_secs(10), || !levee.alive());
    assert!(exited, "levee exits after SIGTERM");
    let status = levee.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    drop(levee);
    drop((first, second));
}

/// The real binary: SIGUSR1 reopens the access log, so a rotated (renamed)
/// file keeps what was written and new lines go to a new file at the path.
#[test]
fn sigusr1_reopens_the_access_log_after_rotation() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = app_node(&rt, "app", Behavior::Healthy { body_bytes: 4 });
    let (listen, admin) = listen_and_admin();
    let dir = TempDir::new("sigusr1");
    let (file, access, rotated) = (
        dir.path("levee.toml"),
        dir.path("access.log"),
        dir.path("access.log.1"),
    );
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[log]\naccess = \"{}\"\n[[backend]]\nname = \"app\"\nnodes = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
            access.display(),
            node.addr()
        ),
    )
    .unwrap();
    let levee = Running::start(&file, dir.path("levee.log"));
    let count = |path: &Path| std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    assert!(
        within(Duration::from_secs(10), || http_get(listen, "/before")
            .is_some_and(|(c, _)| c == 200)),
        "levee answers"
    );
    assert!(
        within(Duration::from_secs(5), || count(&access) >= 1),
        "the first line is written"
    );
    std::fs::rename(&access, &rotated).unwrap();
    levee.signal("USR1");
    // The reopen happens within the writer's flush period; lines sent until
    // then may still go to the renamed file, so poll until one lands anew.
    let landed = within(Duration::from_secs(10), || {
        let _ = http_get(listen, "/after");
        count(&access) >= 1
    });
    assert!(landed, "a new file at the path after SIGUSR1");
    let new = std::fs::read_to_string(&access).unwrap();
    assert!(
        new.lines().all(|l| l.contains("\"path\":\"/after\"")),
        "{new}"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("\"path\":\"/before\""), "{old}");
    drop(levee);
}

#[test]
fn demo_list_prints_every_scene() {
    let out = levee().args(["demo", "--list"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in levee::demo::scene_names() {
        assert!(
            stdout.lines().any(|l| l.starts_with(name)),
            "{name} missing: {stdout}"
        );
    }
}

/// A scene whose checks hold: a per-second table, a verdict, exit 0, no
/// colour codes into a pipe and levee's own log in a file, not on stdout.
#[test]
fn demo_scene_prints_a_live_table_and_a_verdict_and_succeeds() {
    let out = levee()
        .args(["demo", "--scene", "reload", "--duration", "1500ms"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("levee's own log for this demo: "),
        "{stdout}"
    );
    assert!(
        stdout.contains("not ok, by status and reason") && stdout.contains("   1.0s "),
        "a per-second table: {stdout}"
    );
    assert!(stdout.contains("verdict: contained"), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "no ANSI codes into a pipe: {stdout}"
    );
    assert!(
        !stdout.contains("config reloaded"),
        "levee's own log stays out of the story: {stdout}"
    );
    let log = stdout
        .lines()
        .find_map(|l| l.strip_prefix("levee's own log for this demo: "))
        .unwrap();
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(logged.contains("config reloaded"), "{logged}");
    assert!(!logged.contains('\x1b'), "no ANSI codes in the log file");
    let _ = std::fs::remove_file(log);
}

/// With no time to send traffic nothing is shown, and the demo says so:
/// the verdict fails and the exit status is not zero.
#[test]
fn demo_fails_when_the_scene_shows_nothing() {
    let out = levee()
        .args(["demo", "--scene", "bad-node", "--duration", "0s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("verdict: NOT contained"), "{stdout}");
    assert!(
        stdout.contains("FAIL all clients: requests measured: 0 (needs >= 40)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("the fault was not contained in: bad-node"),
        "{stderr}"
    );
}

/// The real binary with `[log] format = "json"`: levee's own log is one JSON
/// object per line on stderr, without escape codes, and its operational
/// events carry their figures as fields (a breaker's move with its window).
/// A reload applies a new `level` at once and reports a new `format` as
/// needing a restart.
#[test]
fn json_log_format_writes_structured_events_to_stderr() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = app_node(&rt, "failing", "status:500".parse().unwrap());
    let (listen, admin) = listen_and_admin();
    let dir = TempDir::new("json-log");
    let (file, stderr) = (dir.path("levee.toml"), dir.path("stderr.log"));
    let config = |level: &str, format: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
             [log]\nlevel = \"{level}\"\nformat = \"{format}\"\n\
             [[backend]]\nname = \"app\"\nnodes = [\"{}\"]\nmax_ejected_percent = 100\n\
             [backend.breaker]\nconsecutive_failures = 3\nopen_for = \"30s\"\n\
             [[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
            node.addr()
        )
    };
    std::fs::write(&file, config("warn", "json")).unwrap();
    let levee = Running::start(&file, stderr.clone());
    let lines = || -> Vec<serde_json::Value> {
        let text = std::fs::read(&stderr).unwrap();
        assert!(!text.contains(&0x1b), "no escape codes in the log");
        String::from_utf8(text)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let event = |message: &str| lines().into_iter().find(|l| l["message"] == message);
    // Failing answers until the breaker opens (3 in a row), bounded.
    let opened = within(Duration::from_secs(20), || {
        let _ = http_get(listen, "/");
        event("breaker moved").is_some()
    });
    assert!(opened, "a breaker move is logged: {:?}", lines());
    let moved = event("breaker moved").unwrap();
    assert_eq!(moved["level"], "WARN");
    assert_eq!(moved["backend"], "app");
    assert_eq!(moved["node"], node.addr().to_string());
    assert_eq!(moved["from"], "closed");
    assert_eq!(moved["to"], "open");
    assert!(moved["consecutive"].as_u64() >= Some(3), "{moved}");
    assert!(moved["failures"].as_u64() >= Some(3), "{moved}");
    assert!(moved["timestamp"].is_string(), "{moved}");
    assert!(
        event("levee is serving").is_none(),
        "info events are below level = \"warn\""
    );

    // Reload: the new level applies at once; the new format needs a restart.
    std::fs::write(&file, config("info", "pretty")).unwrap();
    let reloaded = within(Duration::from_secs(10), || {
        event("config reloaded").is_some()
    });
    assert!(reloaded, "info events pass after the reload: {:?}", lines());
    let status = status_of(admin).unwrap();
    assert_eq!(
        status["config"]["restart_required"],
        serde_json::json!(["log.format"])
    );
    assert!(
        lines().iter().all(|l| l.is_object()),
        "still JSON until a restart"
    );
    drop(levee);
    drop(node);
}
