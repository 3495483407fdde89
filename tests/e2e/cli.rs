//! The `levee` binary: `check` on good and broken configs, and SIGTERM.

use std::io::Write;
use std::process::Command;

fn levee() -> Command {
    Command::new(env!("CARGO_BIN_EXE_levee"))
}

fn repo(path: &str) -> String {
    format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_every_shipped_config_and_summarises_it() {
    for file in ["config/levee.toml", "config/demo.toml"] {
        let out = levee()
            .args(["check", "--config", &repo(file)])
            .output()
            .unwrap();
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
fn check_names_file_line_and_key_of_a_broken_config() {
    let dir = std::env::temp_dir().join(format!("levee-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.toml");
    let mut f = std::fs::File::create(&file).unwrap();
    write!(
        f,
        "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[backend]]\nname = \"app\"\nnodes = [\"127.0.0.1:9001\"]\nmax_in_flight = 0\n\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n"
    )
    .unwrap();
    drop(f);
    let out = levee()
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("broken.toml:7"), "{stderr}");
    assert!(stderr.contains("backend[0].max_in_flight"), "{stderr}");

    let unknown = dir.join("unknown.toml");
    std::fs::write(
        &unknown,
        "[server]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n",
    )
    .unwrap();
    let out = levee()
        .args(["check", "--config", unknown.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown.toml:3"), "{stderr}");
    assert!(stderr.contains("lisen"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real binary: SIGTERM stops accepting, lets the in-flight request
/// finish, and exits 0.
#[test]
fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let node = rt
        .block_on(levee_testkit::AppNode::start(
            "slow",
            levee_testkit::Behavior::Slow {
                delay: std::time::Duration::from_millis(800),
                body_bytes: 100,
            },
        ))
        .unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (listen, admin) = (free(), free());
    let dir = std::env::temp_dir().join(format!("levee-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("levee.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{listen}\"\nshutdown_grace = \"5s\"\n[admin]\nlisten = \"{admin}\"\n[[backend]]\nname = \"app\"\nnodes = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nbackend = \"app\"\n",
            node.addr()
        ),
    )
    .unwrap();
    let mut child = levee()
        .args(["run", "--config", file.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) for the listener.
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(listen).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "levee listens");
    let request = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(listen).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let answer = request.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("levee did not exit after SIGTERM");
    });
    assert!(status.success(), "{status:?}");
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "no longer listening"
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(node);
}
