//! TLS termination: HTTPS over HTTP/1.1 and HTTP/2 by ALPN, certificates by
//! SNI, bad pairs refused by `levee check` and by reload, and failed
//! handshakes counted.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::{StatusCode, Version};
use levee::Levee;
use levee_testkit::Behavior;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{client, get, metrics_text, node, url, TempDir};
use crate::pki::{https_get, Ca, Leaf};

/// A TLS listener with `a.test` (the default) and `b.test`, in front of one
/// node; certificate paths are relative to the file.
fn config_text(node: std::net::SocketAddr, handshake_timeout: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[server.tls]
listen = "127.0.0.1:0"
handshake_timeout = "{handshake_timeout}"

[[server.tls.certificate]]
cert = "a.pem"
key = "a.key"
server_names = ["a.test"]

[[server.tls.certificate]]
cert = "b.pem"
key = "b.key"
server_names = ["b.test", "*.b.test"]

[admin]
listen = "127.0.0.1:0"

[[backend]]
name = "app"
nodes = ["{node}"]
connect_timeout = "1s"
timeout = "5s"

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"#
    )
}

struct Site {
    dir: TempDir,
    ca: Ca,
    a: Leaf,
    b: Leaf,
}

impl Site {
    fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let ca = Ca::new("levee test CA");
        let a = ca.issue(&["a.test"]);
        let b = ca.issue(&["b.test", "*.b.test"]);
        a.write(&dir, "a");
        b.write(&dir, "b");
        Self { dir, ca, a, b }
    }

    fn write_config(
        &self,
        node: std::net::SocketAddr,
        handshake_timeout: &str,
    ) -> std::path::PathBuf {
        let file = self.dir.path("levee.toml");
        std::fs::write(&file, config_text(node, handshake_timeout)).unwrap();
        file
    }
}

async fn start(file: &Path) -> Levee {
    let config = levee_config::load(file).unwrap_or_else(|e| panic!("{e}"));
    Levee::start(config).await.unwrap()
}

const LIMIT: Duration = Duration::from_secs(10);

async fn fetch(
    levee: &Levee,
    site: &Site,
    alpn: &[&[u8]],
    name: &str,
    sni: bool,
) -> crate::pki::HttpsGot {
    let addr = levee.tls_addr.unwrap();
    let got = https_get(addr, site.ca.client_config(alpn), name, sni, "/hello");
    tokio::time::timeout(LIMIT, got).await.unwrap().unwrap()
}

#[tokio::test]
async fn https_is_served_over_http1_and_over_http2_chosen_by_alpn() {
    let app = node(Behavior::Healthy { body_bytes: 32 }).await;
    let site = Site::new("tls-alpn");
    let levee = start(&site.write_config(app.addr(), "5s")).await;

    let h1 = fetch(&levee, &site, &[b"http/1.1"], "a.test", true).await;
    assert_eq!(h1.status, StatusCode::OK);
    assert_eq!(h1.version, Version::HTTP_11);
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.body.len(), 32);

    let h2 = fetch(&levee, &site, &[b"h2", b"http/1.1"], "a.test", true).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]), "levee prefers h2");
    assert_eq!(h2.status, StatusCode::OK);
    assert_eq!(h2.version, Version::HTTP_2);
    assert_eq!(h2.body.len(), 32);

    // No ALPN at all is HTTP/1.1.
    let none = fetch(&levee, &site, &[], "a.test", true).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.alpn, None);
    assert_eq!(none.version, Version::HTTP_11);

    // The node is told the client came over TLS; plain clients say http.
    let plain = get(&client(), &url(&levee, "/plain")).await;
    assert_eq!(plain.status, StatusCode::OK);
    let recorded = app.recorded();
    let proto = |path: &str| {
        recorded
            .iter()
            .find(|r| r.uri.path() == path)
            .map(|r| r.headers["x-forwarded-proto"].clone())
            .unwrap()
    };
    assert_eq!(proto("/hello"), "https");
    assert_eq!(proto("/plain"), "http");
    levee.shutdown().await;
}

#[tokio::test]
async fn sni_selects_the_certificate_and_clients_without_sni_get_the_default() {
    let app = node(Behavior::Healthy { body_bytes: 8 }).await;
    let site = Site::new("tls-sni");
    let levee = start(&site.write_config(app.addr(), "5s")).await;

    let a = fetch(&levee, &site, &[], "a.test", true).await;
    assert_eq!(a.presented, site.a.cert_der);
    let b = fetch(&levee, &site, &[], "b.test", true).await;
    assert_eq!(b.presented, site.b.cert_der);
    assert_eq!(b.status, StatusCode::OK);
    let wild = fetch(&levee, &site, &[], "api.b.test", true).await;
    assert_eq!(wild.presented, site.b.cert_der, "a wildcard name matches");
    // Without SNI the first certificate is served (verified as a.test).
    let none = fetch(&levee, &site, &[], "a.test", false).await;
    assert_eq!(none.presented, site.a.cert_der);
    assert_eq!(none.status, StatusCode::OK);
    levee.shutdown().await;
}

#[tokio::test]
async fn certificates_are_reread_on_reload_and_a_mismatched_pair_keeps_the_old_ones() {
    let app = node(Behavior::Healthy { body_bytes: 8 }).await;
    let site = Site::new("tls-reload");
    let file = site.write_config(app.addr(), "5s");
    let mut levee = start(&file).await;
    let before = fetch(&levee, &site, &[], "b.test", true).await;
    assert_eq!(before.presented, site.b.cert_der);

    // A renewed certificate at the same paths: the same toml reloads it.
    let renewed = site.ca.issue(&["b.test", "*.b.test"]);
    renewed.write(&site.dir, "b");
    levee.reload_file(&file).await.unwrap();
    let after = fetch(&levee, &site, &[], "b.test", true).await;
    assert_eq!(
        after.presented, renewed.cert_der,
        "the new certificate is served"
    );

    // A key that belongs to another certificate: refused, naming the file.
    let other = site.ca.issue(&["b.test"]);
    std::fs::write(site.dir.path("b.key"), &other.key_pem).unwrap();
    let err = levee.reload_file(&file).await.unwrap_err().to_string();
    assert!(err.contains("b.key"), "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains("server.tls.certificate[1].key"), "{err}");
    let still = fetch(&levee, &site, &[], "b.test", true).await;
    assert_eq!(
        still.presented, renewed.cert_der,
        "the last good pair serves"
    );
    assert_eq!(still.status, StatusCode::OK);
    let metrics = metrics_text(&client(), &levee).await;
    assert!(
        metrics.contains("levee_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
    levee.shutdown().await;
}

#[test]
fn levee_check_refuses_a_mismatched_pair_and_names_the_file() {
    let site = Site::new("tls-check");
    let file = site.write_config("127.0.0.1:9".parse().unwrap(), "5s");
    let ok = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        stdout.contains("tls listener 127.0.0.1:0: 2 certificates"),
        "{stdout}"
    );

    std::fs::write(site.dir.path("a.key"), &site.b.key_pem).unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("server.tls.certificate[0].key"), "{stderr}");
    assert!(stderr.contains("a.key"), "{stderr}");
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
}

#[tokio::test]
async fn failed_handshakes_are_counted_by_reason() {
    let app = node(Behavior::Healthy { body_bytes: 8 }).await;
    let site = Site::new("tls-fail");
    let levee = start(&site.write_config(app.addr(), "300ms")).await;
    let addr = levee.tls_addr.unwrap();

    // Plain HTTP on the TLS port.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, plain.read_to_end(&mut buf))
        .await
        .unwrap();

    // A client that does not trust levee's certificate.
    let stranger = Ca::new("another CA");
    let refused = https_get(addr, stranger.client_config(&[]), "a.test", true, "/");
    assert!(tokio::time::timeout(LIMIT, refused).await.unwrap().is_err());

    // A client that never says hello is cut at the handshake timeout.
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(LIMIT, silent.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let wanted = [
        "levee_tls_handshake_failures_total{reason=\"bad-message\"} 1",
        "levee_tls_handshake_failures_total{reason=\"bad-certificate\"} 1",
        "levee_tls_handshake_failures_total{reason=\"timeout\"} 1",
    ];
    let http = client();
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = metrics_text(&http, &levee).await;
        if wanted.iter().all(|w| metrics.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in wanted {
        assert!(metrics.contains(w), "{w}\n{metrics}");
    }
    // The TLS listener still serves.
    let ok = fetch(&levee, &site, &[], "a.test", true).await;
    assert_eq!(ok.status, StatusCode::OK);
    levee.shutdown().await;
}
