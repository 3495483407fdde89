//! `[server.tls]` and a backend's `protocol` and `tls*` keys: the files they
//! name are read and checked here, so a bad pair fails validation.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::ServerName;

use super::{at, choice, positive, socket_addr, Ctx};
use crate::error::ConfigError;
use crate::locate::Seg;
use crate::raw::{RawBackend, RawServerTls};
use crate::tls::{self, PairPart, UpstreamTlsSettings};
use crate::{ServerTlsConfig, UpstreamProtocol, UpstreamTlsConfig};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[server.tls]`, with every certificate read and checked.
pub(super) fn server_tls(
    cx: &Ctx<'_>,
    raw: Option<&RawServerTls>,
) -> Result<Option<ServerTlsConfig>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let base = [Seg::Key("server"), Seg::Key("tls")];
    let listen = match &raw.listen {
        Some(text) => socket_addr(cx, &at(&base, "listen"), text, "0.0.0.0:8443")?,
        None => {
            return Err(cx.invalid(
                &at(&base, "listen"),
                "is required: the address of the TLS listener, e.g. listen = \"0.0.0.0:8443\"",
            ))
        }
    };
    let handshake_timeout = positive(
        cx,
        &at(&base, "handshake_timeout"),
        raw.handshake_timeout,
        HANDSHAKE_TIMEOUT,
    )?;
    if raw.certificate.is_empty() {
        return Err(cx.invalid(
            &at(&base, "certificate"),
            "at least one [[server.tls.certificate]] is required, \
             e.g. cert = \"certs/site.pem\" key = \"certs/site.key\"",
        ));
    }
    let mut certificates = Vec::with_capacity(raw.certificate.len());
    for (i, c) in raw.certificate.iter().enumerate() {
        let mut cbase = at(&base, "certificate");
        cbase.push(Seg::Index(i));
        let cert = required_path(cx, &cbase, "cert", c.cert.as_deref())?;
        let key = required_path(cx, &cbase, "key", c.key.as_deref())?;
        let names: Vec<String> = c
            .server_names
            .iter()
            .flatten()
            .map(|n| n.trim().to_ascii_lowercase())
            .collect();
        if i > 0 && names.is_empty() {
            return Err(cx.invalid(
                &at(&cbase, "server_names"),
                "is required on every certificate but the first (the first is the \
                 default for clients without SNI); list the names it is served for",
            ));
        }
        let pair = tls::load_pair(&cert, &key, names).map_err(|(part, message)| {
            let field = match part {
                PairPart::Cert => "cert",
                PairPart::Key => "key",
            };
            cx.invalid(&at(&cbase, field), message)
        })?;
        certificates.push(pair);
    }
    let rustls =
        tls::server_config(&certificates).map_err(|m| cx.invalid(&at(&base, "certificate"), m))?;
    Ok(Some(ServerTlsConfig {
        listen,
        handshake_timeout,
        certificates,
        rustls,
    }))
}

/// A backend's `protocol` and, with `tls = true`, its TLS settings. `tls_*`
/// keys without `tls = true` are refused rather than ignored.
pub(super) fn upstream(
    cx: &Ctx<'_>,
    base: &[Seg<'_>],
    raw: &RawBackend,
) -> Result<(UpstreamProtocol, Option<UpstreamTlsConfig>), ConfigError> {
    let protocol = match &raw.protocol {
        Some(text) => choice(
            cx,
            &at(base, "protocol"),
            text,
            &UpstreamProtocol::ALL,
            UpstreamProtocol::as_str,
            "protocol",
        )?,
        None => UpstreamProtocol::default(),
    };
    if raw.tls != Some(true) {
        let set = [
            ("tls_ca", raw.tls_ca.is_some()),
            ("tls_server_name", raw.tls_server_name.is_some()),
            ("tls_client_cert", raw.tls_client_cert.is_some()),
            ("tls_client_key", raw.tls_client_key.is_some()),
            (
                "tls_insecure_skip_verify",
                raw.tls_insecure_skip_verify.is_some(),
            ),
        ];
        if let Some((key, _)) = set.iter().find(|(_, s)| *s) {
            return Err(cx.invalid(
                &at(base, key),
                "applies only with tls = true; add tls = true or remove this key",
            ));
        }
        return Ok((protocol, None));
    }
    let insecure_skip_verify = raw.tls_insecure_skip_verify.unwrap_or(false);
    if insecure_skip_verify && raw.tls_ca.is_some() {
        return Err(cx.invalid(
            &at(base, "tls_ca"),
            "is never used with tls_insecure_skip_verify = true; remove one of them",
        ));
    }
    let ca = raw.tls_ca.as_deref().map(|p| cx.dir.join(p));
    let server_name = match &raw.tls_server_name {
        Some(name) => Some(ServerName::try_from(name.trim().to_owned()).map_err(|_| {
            cx.invalid(
                &at(base, "tls_server_name"),
                format!("\"{name}\" is not a DNS name or IP address"),
            )
        })?),
        None => None,
    };
    let client_cert = match (&raw.tls_client_cert, &raw.tls_client_key) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (cx.dir.join(cert), cx.dir.join(key));
            Some(
                tls::load_pair(&cert, &key, Vec::new()).map_err(|(part, message)| {
                    let field = match part {
                        PairPart::Cert => "tls_client_cert",
                        PairPart::Key => "tls_client_key",
                    };
                    cx.invalid(&at(base, field), message)
                })?,
            )
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err(cx.invalid(
                &at(base, "tls_client_key"),
                "is required with tls_client_cert: the private key of that certificate",
            ))
        }
        (None, Some(_)) => {
            return Err(cx.invalid(
                &at(base, "tls_client_cert"),
                "is required with tls_client_key: the certificate levee presents to nodes",
            ))
        }
    };
    let tls = tls::upstream_config(UpstreamTlsSettings {
        ca,
        server_name,
        client_cert,
        insecure_skip_verify,
        protocol,
    })
    .map_err(|m| cx.invalid(&at(base, "tls_ca"), m))?;
    Ok((protocol, Some(tls)))
}

fn required_path(
    cx: &Ctx<'_>,
    base: &[Seg<'_>],
    key: &'static str,
    value: Option<&str>,
) -> Result<PathBuf, ConfigError> {
    match value {
        Some(p) if !p.trim().is_empty() => Ok(cx.dir.join(p)),
        _ => Err(cx.invalid(
            &at(base, key),
            "is required: the PEM file's path (relative to this config file's directory)",
        )),
    }
}
