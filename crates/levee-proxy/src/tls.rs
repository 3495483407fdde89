//! Client-side TLS termination: the handshake of one accepted connection,
//! bounded by `server.tls.handshake_timeout`, its failures counted by cause
//! (`levee_tls_handshake_failures_total{reason}`) and logged at debug only.
//!
//! The certificates, SNI choice and ALPN (`h2`, `http/1.1`) come ready-made
//! in the live config's [`rustls::ServerConfig`], so a reload that replaces
//! a certificate applies to the next handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use levee_telemetry::{Telemetry, TlsHandshakeFailure};
use rustls::{AlertDescription, Error as TlsError};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

/// Runs the server side of a handshake; on failure counts it and gives up
/// the connection.
pub(crate) async fn accept(
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    telemetry: &Telemetry,
) -> Option<TlsStream<TcpStream>> {
    let handshake = TlsAcceptor::from(config).accept(stream);
    let failure = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err(e)) => {
            let why = classify(&e);
            debug!(%peer, reason = why.as_str(), error = %e, "TLS handshake failed");
            why
        }
        Err(_) => {
            debug!(%peer, ?timeout, "TLS handshake timed out");
            TlsHandshakeFailure::Timeout
        }
    };
    telemetry.tls_handshake_failed(failure);
    None
}

/// Maps a failed handshake to its cause: tokio-rustls wraps rustls's error
/// in the I/O error.
fn classify(e: &io::Error) -> TlsHandshakeFailure {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    else {
        return TlsHandshakeFailure::Other;
    };
    match tls {
        TlsError::PeerIncompatible(_)
        | TlsError::AlertReceived(AlertDescription::ProtocolVersion) => {
            TlsHandshakeFailure::ProtocolVersion
        }
        TlsError::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate,
        ) => TlsHandshakeFailure::BadCertificate,
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. }
        | TlsError::PeerMisbehaved(_)
        | TlsError::PeerSentOversizedRecord => TlsHandshakeFailure::BadMessage,
        _ => TlsHandshakeFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_map_to_their_cause() {
        let wrap = |e: TlsError| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            classify(&wrap(TlsError::AlertReceived(AlertDescription::UnknownCA))),
            TlsHandshakeFailure::BadCertificate
        );
        assert_eq!(
            classify(&wrap(TlsError::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            TlsHandshakeFailure::BadMessage
        );
        assert_eq!(
            classify(&wrap(TlsError::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered
            ))),
            TlsHandshakeFailure::ProtocolVersion
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            TlsHandshakeFailure::Other
        );
    }
}
