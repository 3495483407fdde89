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
