//! Why a client's TLS handshake failed, as the `reason` label of
//! `levee_tls_handshake_failures_total`. Failing clients are counted, not
//! logged one by one: a scanner must not flood the log.

/// The cause of a failed client handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshakeFailure {
    /// The client did not finish within `server.tls.handshake_timeout`.
    Timeout,
    /// No TLS version or cipher suite in common (e.g. a TLS 1.0 client).
    ProtocolVersion,
    /// The client refused levee's certificate (an alert about it).
    BadCertificate,
    /// What arrived is not TLS, or breaks its rules (e.g. plain HTTP).
    BadMessage,
    /// Anything else: the client closed or reset mid-handshake.
    Other,
}

impl TlsHandshakeFailure {
    pub const ALL: [TlsHandshakeFailure; 5] = [
        TlsHandshakeFailure::Timeout,
        TlsHandshakeFailure::ProtocolVersion,
        TlsHandshakeFailure::BadCertificate,
        TlsHandshakeFailure::BadMessage,
        TlsHandshakeFailure::Other,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            TlsHandshakeFailure::Timeout => "timeout",
            TlsHandshakeFailure::ProtocolVersion => "protocol-version",
            TlsHandshakeFailure::BadCertificate => "bad-certificate",
            TlsHandshakeFailure::BadMessage => "bad-message",
            TlsHandshakeFailure::Other => "other",
        }
    }
}
