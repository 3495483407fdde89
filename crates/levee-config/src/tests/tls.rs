//! `[server.tls]` and the backend TLS keys: the files are read and checked
//! at validation, and every problem names its key.

use std::path::PathBuf;

use super::*;

/// A directory of PEM files made with rcgen, removed on drop.
struct Pems(PathBuf);

impl Pems {
    fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "levee-config-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `{stem}.pem` and `{stem}.key`, a self-signed pair for `names`.
    fn pair(&self, stem: &str, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).unwrap();
        let (c, k) = (
            self.0.join(format!("{stem}.pem")),
            self.0.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, signing_key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

impl Drop for Pems {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server_tls(certs: &str) -> String {
    config(
        &format!("[server.tls]\nlisten = \"127.0.0.1:8443\"\n{certs}"),
        "",
        "",
    )
}

#[test]
fn a_tls_listener_with_two_certificates_loads() {
    let pems = Pems::new("two");
    let (a, ak) = pems.pair("a", &["a.test"]);
    let (b, bk) = pems.pair("b", &["b.test", "*.b.test"]);
    let c = ok(&server_tls(&format!(
        "[[server.tls.certificate]]\ncert = \"{a}\"\nkey = \"{ak}\"\n\
         [[server.tls.certificate]]\ncert = \"{b}\"\nkey = \"{bk}\"\nserver_names = [\"B.test\", \"*.b.test\"]\n"
    )));
    let tls = c.server.tls.unwrap();
    assert_eq!(tls.listen, addr("127.0.0.1:8443"));
    assert_eq!(tls.handshake_timeout, secs(10));
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[1].server_names, ["b.test", "*.b.test"]);
    assert_eq!(
        tls.rustls.alpn_protocols,
        [ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()]
    );
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_refused_naming_the_file() {
    let pems = Pems::new("mismatch");
    let (a, _) = pems.pair("a", &["a.test"]);
    let (_, bk) = pems.pair("b", &["b.test"]);
    let text = server_tls(&format!(
        "[[server.tls.certificate]]\ncert = \"{a}\"\nkey = \"{bk}\"\n"
    ));
    let e = expect(
        &text,
        "server.tls.certificate[0].key",
        line_with(&text, "key = "),
        "does not match the certificate",
    );
    assert!(e.to_string().contains(&bk), "{e}");
}

#[test]
fn missing_files_and_uncovered_names_are_refused() {
    let pems = Pems::new("bad");
    let (a, ak) = pems.pair("a", &["a.test"]);
    let text = server_tls(&format!(
        "[[server.tls.certificate]]\ncert = \"{a}.missing\"\nkey = \"{ak}\"\n"
    ));
    expect(
        &text,
        "server.tls.certificate[0].cert",
        line_with(&text, "cert = "),
        "cannot read PEM certificates",
    );
    let text = server_tls(&format!(
        "[[server.tls.certificate]]\ncert = \"{a}\"\nkey = \"{ak}\"\nserver_names = [\"other.test\"]\n"
    ));
    expect(
        &text,
        "server.tls.certificate[0].cert",
        line_with(&text, "cert = "),
        "not valid for server name \"other.test\"",
    );
    let text = server_tls(&format!(
        "[[server.tls.certificate]]\ncert = \"{a}\"\nkey = \"{ak}\"\n\
         [[server.tls.certificate]]\ncert = \"{a}\"\nkey = \"{ak}\"\n"
    ));
    let e = err(&text);
    assert_eq!(e.key(), Some("server.tls.certificate[1].server_names"));
    let text = server_tls("");
    assert_eq!(err(&text).key(), Some("server.tls.certificate"));
}

#[test]
fn the_tls_listener_needs_its_own_address() {
    let pems = Pems::new("addr");
    let (a, ak) = pems.pair("a", &["a.test"]);
    let text = config(
        &format!(
            "[server.tls]\nlisten = \"127.0.0.1:8080\"\n\
             [[server.tls.certificate]]\ncert = \"{a}\"\nkey = \"{ak}\"\n"
        ),
        "",
        "",
    );
    let e = err(&text);
    assert_eq!(e.key(), Some("server.tls.listen"));
    assert!(e.to_string().contains("server.listen"), "{e}");
}

#[test]
fn backend_protocol_and_tls_keys() {
    let c = ok(&config("", "", ""));
    assert_eq!(c.backends[0].protocol, UpstreamProtocol::Http1);
    assert!(c.backends[0].tls.is_none());

    let c = ok(&config("", "protocol = \"http2\"\ntls = true", ""));
    let b = &c.backends[0];
    assert_eq!(b.protocol, UpstreamProtocol::Http2);
    let tls = b.tls.as_ref().unwrap();
    assert!(!tls.insecure_skip_verify);
    assert_eq!(tls.rustls.alpn_protocols, [ALPN_H2.to_vec()]);

    let text = config("", "protocol = \"h2\"", "");
    expect(
        &text,
        "backend[0].protocol",
        line_with(&text, "protocol"),
        "\"http2\"",
    );
    let text = config("", "tls_ca = \"ca.pem\"", "");
    expect(
        &text,
        "backend[0].tls_ca",
        line_with(&text, "tls_ca"),
        "tls = true",
    );
    let text = config("", "tls = true\ntls_client_cert = \"c.pem\"", "");
    assert_eq!(err(&text).key(), Some("backend[0].tls_client_key"));
    let text = config("", "tls = true\ntls_ca = \"/nonexistent/ca.pem\"", "");
    expect(
        &text,
        "backend[0].tls_ca",
        line_with(&text, "tls_ca"),
        "/nonexistent/ca.pem",
    );
    let text = config("", "tls = true\ntls_server_name = \"not a name\"", "");
    assert_eq!(err(&text).key(), Some("backend[0].tls_server_name"));
}

#[test]
fn a_replaced_file_makes_the_config_differ() {
    let pems = Pems::new("replaced");
    let (a, _) = pems.pair("a", &["a.test"]);
    let text = config("", &format!("tls = true\ntls_ca = \"{a}\""), "");
    let before = ok(&text);
    assert_eq!(before, ok(&text), "same files, same config");
    pems.pair("a", &["a.test"]);
    let after = ok(&text);
    assert_ne!(before.backends[0], after.backends[0], "a new CA bundle");
}
