//! TLS material: certificates and keys read from PEM files, checked, and
//! assembled into rustls configs while the config is validated, so that
//! `levee check` and a reload refuse exactly what a handshake would fail on.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only. Nothing here opens
//! a socket: the data plane takes the finished [`rustls::ServerConfig`] and
//! [`rustls::ClientConfig`] and runs the handshakes.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, InconsistentKeys, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// ALPN protocol id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// `[server.tls]`: the TLS listener and the certificates it serves.
#[derive(Clone)]
pub struct ServerTlsConfig {
    /// Address of the TLS listener (beside the plain `server.listen`).
    pub listen: SocketAddr,
    /// Longest a client may take to complete its handshake (default 10s).
    pub handshake_timeout: Duration,
    /// In file order; the first is served to clients that send no SNI or a
    /// name no certificate lists.
    pub certificates: Vec<TlsCertificate>,
    /// TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, certificate by SNI.
    pub rustls: Arc<rustls::ServerConfig>,
}

impl PartialEq for ServerTlsConfig {
    /// Equal when built from the same settings and the same file contents.
    fn eq(&self, other: &Self) -> bool {
        self.listen == other.listen
            && self.handshake_timeout == other.handshake_timeout
            && self.certificates == other.certificates
    }
}

impl Eq for ServerTlsConfig {}

impl fmt::Debug for ServerTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsConfig")
            .field("listen", &self.listen)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its private key, read from PEM files and checked
/// to belong together.
#[derive(Clone)]
pub struct TlsCertificate {
    /// The chain's file (leaf first), as resolved against the config's directory.
    pub cert: PathBuf,
    /// The key's file.
    pub key: PathBuf,
    /// SNI names it is served for, lowercase; `*.example.com` covers one
    /// label. Every name is covered by the certificate.
    pub server_names: Vec<String>,
    pub certified: Arc<CertifiedKey>,
    /// The key's DER, kept only so that a reload notices a replaced key.
    key_der: Arc<[u8]>,
}

impl PartialEq for TlsCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.cert == other.cert
            && self.key == other.key
            && self.server_names == other.server_names
            && self.certified.cert == other.certified.cert
            && self.key_der == other.key_der
    }
}

impl Eq for TlsCertificate {}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

/// How levee speaks HTTP to a backend's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one request per connection at a time (the default).
    #[default]
    Http1,
    /// HTTP/2, many requests over one connection: by ALPN over TLS, by prior
    /// knowledge (h2c) over plain TCP.
    Http2,
}

impl UpstreamProtocol {
    pub const ALL: [UpstreamProtocol; 2] = [UpstreamProtocol::Http1, UpstreamProtocol::Http2];

    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
        }
    }
}

/// TLS to a backend's nodes (`tls = true` and the `tls_*` keys).
#[derive(Clone)]
pub struct UpstreamTlsConfig {
    /// The CA bundle nodes are verified against; `None`: the webpki roots.
    pub ca: Option<PathBuf>,
    /// SNI and verification name; `None`: the node's host name when it was
    /// given by name, else its IP address.
    pub server_name: Option<ServerName<'static>>,
    /// The certificate levee presents to nodes that ask for one (mTLS).
    pub client_cert: Option<TlsCertificate>,
    /// `tls_insecure_skip_verify = true`: any certificate is accepted.
    pub insecure_skip_verify: bool,
    /// TLS 1.2 and 1.3, ALPN for the backend's protocol.
    pub rustls: Arc<ClientConfig>,
    /// The CA file's certificates, only so that a reload notices a new bundle.
    ca_der: Vec<CertificateDer<'static>>,
}

impl PartialEq for UpstreamTlsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.ca == other.ca
            && self.ca_der == other.ca_der
            && self.server_name == other.server_name
            && self.client_cert == other.client_cert
            && self.insecure_skip_verify == other.insecure_skip_verify
            && self.rustls.alpn_protocols == other.rustls.alpn_protocols
    }
}

impl Eq for UpstreamTlsConfig {}

impl fmt::Debug for UpstreamTlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTlsConfig")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .field("client_cert", &self.client_cert)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish_non_exhaustive()
    }
}

/// Which key of a certificate pair a loading error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairPart {
    Cert,
    Key,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads `cert` and `key` and checks that the key signs for the chain's leaf
/// and that the leaf covers every name of `server_names`.
pub(crate) fn load_pair(
    cert: &Path,
    key: &Path,
    server_names: Vec<String>,
) -> Result<TlsCertificate, (PairPart, String)> {
    let chain = read_certs(cert).map_err(|m| (PairPart::Cert, m))?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            PairPart::Key,
            format!("{}: no usable PEM private key: {e}", key.display()),
        )
    })?;
    let key_bytes: Arc<[u8]> = key_der.secret_der().into();
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| (PairPart::Key, format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err((
                PairPart::Key,
                format!(
                    "the private key in {} does not match the certificate in {}; \
                     give the key the certificate was issued for",
                    key.display(),
                    cert.display()
                ),
            ))
        }
        Err(e) => return Err((PairPart::Cert, format!("{}: {e}", cert.display()))),
    }
    let leaf = certified.cert.first().ok_or_else(|| {
        (
            PairPart::Cert,
            format!("{}: no certificate", cert.display()),
        )
    })?;
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| (PairPart::Cert, format!("{}: {e}", cert.display())))?;
    for name in &server_names {
        // A wildcard name is checked with one label in its place.
        let probe = match name.strip_prefix("*.") {
            Some(rest) => format!("levee-probe.{rest}"),
            None => name.clone(),
        };
        let covered = ServerName::try_from(probe.as_str())
            .ok()
            .is_some_and(|n| parsed.verify_is_valid_for_subject_name(&n).is_ok());
        if !covered {
            return Err((
                PairPart::Cert,
                format!(
                    "{}: the certificate is not valid for server name \"{name}\"; \
                     list only names its subject alternative names cover",
                    cert.display()
                ),
            ));
        }
    }
    Ok(TlsCertificate {
        cert: cert.to_owned(),
        key: key.to_owned(),
        server_names,
        certified: Arc::new(certified),
        key_der: key_bytes,
    })
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{}: cannot read PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The server side: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`, the
/// certificate chosen by SNI.
pub(crate) fn server_config(
    certificates: &[TlsCertificate],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let resolver = SniResolver::new(certificates).ok_or("at least one certificate is required")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Settings of a backend's TLS, as validated.
pub(crate) struct UpstreamTlsSettings {
    pub ca: Option<PathBuf>,
    pub server_name: Option<ServerName<'static>>,
    pub client_cert: Option<TlsCertificate>,
    pub insecure_skip_verify: bool,
    pub protocol: UpstreamProtocol,
}

/// The client side for one backend. Errors are about the CA file.
pub(crate) fn upstream_config(s: UpstreamTlsSettings) -> Result<UpstreamTlsConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let mut ca_der = Vec::new();
    let builder = if s.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        match &s.ca {
            Some(path) => {
                ca_der = read_certs(path)?;
                for cert in &ca_der {
                    roots.add(cert.clone()).map_err(|e| {
                        format!("{}: not a usable CA certificate: {e}", path.display())
                    })?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match &s.client_cert {
        Some(c) => {
            builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::clone(&c.certified))))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match s.protocol {
        UpstreamProtocol::Http1 => vec![ALPN_HTTP1.to_vec()],
        UpstreamProtocol::Http2 => vec![ALPN_H2.to_vec()],
    };
    Ok(UpstreamTlsConfig {
        ca: s.ca,
        server_name: s.server_name,
        client_cert: s.client_cert,
        insecure_skip_verify: s.insecure_skip_verify,
        rustls: Arc::new(config),
        ca_der,
    })
}

/// Picks the certificate for a client's SNI: an exact name, then a
/// wildcard one label up, then the default (the first certificate).
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certificates: &[TlsCertificate]) -> Option<Self> {
        let default = Arc::clone(&certificates.first()?.certified);
        let mut by_name = HashMap::new();
        for c in certificates {
            for name in &c.server_names {
                // The first certificate listing a name wins.
                by_name
                    .entry(name.clone())
                    .or_insert_with(|| Arc::clone(&c.certified));
            }
        }
        Some(Self { by_name, default })
    }

    fn lookup(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = sni.to_ascii_lowercase();
        if let Some(c) = self.by_name.get(&sni) {
            return Some(c);
        }
        let (_, parent) = sni.split_once('.')?;
        self.by_name.get(&format!("*.{parent}"))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|n| self.lookup(n));
        Some(Arc::clone(chosen.unwrap_or(&self.default)))
    }
}

/// Presents one certificate to every node that asks for one.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `tls_insecure_skip_verify`: accepts any certificate, but still checks
/// that the handshake is signed by the key of the certificate presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
