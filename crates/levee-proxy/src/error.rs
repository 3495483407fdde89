//! The one place where failures become responses.
//!
//! Mechanisms return small typed causes; [`ProxyError::into_response`] maps
//! each reason, exhaustively, to a status, an `x-levee-error` header, a short
//! plain-text body and, for 503 and 429, `Retry-After`.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use levee_telemetry::ErrorReason;

use crate::access_log::UpstreamInfo;
use crate::body::{ClientBodyError, ProxyBody};

pub const X_LEVEE_ERROR: &str = "x-levee-error";

/// A failure levee answers itself, with the detail that goes to the log.
#[derive(Debug, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct ProxyError {
    pub reason: ErrorReason,
    pub detail: Cow<'static, str>,
    /// `Retry-After` in seconds when the cause knows it (else 1 for 503 and 429).
    pub retry_after: Option<u64>,
    /// The node last tried, for the access log (set only while it is on).
    pub upstream: Option<Box<UpstreamInfo>>,
    /// The client's request body failed part-way: its framing is lost, so
    /// an HTTP/1 connection cannot carry another request and the answer
    /// says `Connection: close`.
    pub closes: bool,
}

impl ProxyError {
    pub fn new(reason: ErrorReason, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            retry_after: None,
            upstream: None,
            closes: false,
        }
    }

    /// The client's request body failed ([`ClientBodyError`]).
    pub fn client_body(e: &ClientBodyError) -> Self {
        Self {
            closes: true,
            ..Self::new(e.reason(), e.to_string())
        }
    }

    /// Tells the client to retry after `secs` seconds.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.reason)
    }

    /// The response the client gets. The body says what happened in one line
    /// but never names nodes or internal addresses.
    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = error_response(self.reason);
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.closes {
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Status for each reason, exhaustively.
pub fn status_of(reason: ErrorReason) -> StatusCode {
    match reason {
        ErrorReason::NoRoute => StatusCode::NOT_FOUND,
        ErrorReason::BulkheadFull
        | ErrorReason::NoHealthyNode
        | ErrorReason::Shed
        | ErrorReason::TunnelLimit => StatusCode::SERVICE_UNAVAILABLE,
        ErrorReason::Deadline => StatusCode::GATEWAY_TIMEOUT,
        ErrorReason::UpstreamConnect
        | ErrorReason::UpstreamReset
        | ErrorReason::UpstreamProtocol
        | ErrorReason::UpstreamTls => StatusCode::BAD_GATEWAY,
        ErrorReason::BadRequest
        | ErrorReason::ClientBody
        | ErrorReason::BadHost
        | ErrorReason::BadUpgrade => StatusCode::BAD_REQUEST,
        ErrorReason::HeaderTooLarge | ErrorReason::TooManyHeaders => {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        }
        ErrorReason::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        ErrorReason::UriTooLong => StatusCode::URI_TOO_LONG,
        ErrorReason::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorReason::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
        ErrorReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
    }
}

fn message_of(reason: ErrorReason) -> &'static str {
    match reason {
        ErrorReason::NoRoute => "no route matches this request",
        ErrorReason::BulkheadFull => "the backend is at its concurrency limit; retry later",
        ErrorReason::Deadline => "the backend did not answer in time",
        ErrorReason::UpstreamConnect => "could not connect to a backend node",
        ErrorReason::UpstreamReset => "the backend node closed the connection",
        ErrorReason::UpstreamProtocol => "the backend node sent an invalid response",
        ErrorReason::BadRequest => "the request is malformed",
        ErrorReason::HeaderTooLarge => "the request headers are too large",
        ErrorReason::ClientBody => "the request body could not be read",
        ErrorReason::Unsupported => "this method is not supported by the proxy",
        ErrorReason::NoHealthyNode => "no backend node is usable right now; retry later",
        ErrorReason::Shed => {
            "the backend is overloaded and sheds lower-priority requests; retry later"
        }
        ErrorReason::BadHost => "the request's Host is missing, repeated or invalid",
        ErrorReason::UriTooLong => "the request target is too long",
        ErrorReason::TooManyHeaders => "the request has too many header fields",
        ErrorReason::BodyTooLarge => "the request body is too large",
        ErrorReason::TunnelLimit => {
            "the route has its maximum of WebSocket tunnels open; retry later"
        }
        ErrorReason::BadUpgrade => "a WebSocket handshake must be a GET asking for websocket alone",
        ErrorReason::UnsupportedTransferEncoding => {
            "the request's transfer coding is not supported (only chunked is)"
        }
        ErrorReason::UpstreamTls => "the TLS handshake with a backend node failed",
        ErrorReason::RateLimited => "too many requests on this route; retry later",
    }
}

/// Builds the response for `reason`.
pub fn error_response(reason: ErrorReason) -> Response<ProxyBody> {
    let status = status_of(reason);
    let mut resp = Response::new(ProxyBody::local(Bytes::from(error_text(reason))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(X_LEVEE_ERROR, HeaderValue::from_static(reason.as_str()));
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// The one-line body of every error levee answers.
fn error_text(reason: ErrorReason) -> String {
    format!(
        "{} {}: {}\n",
        status_of(reason).as_u16(),
        reason.as_str(),
        message_of(reason)
    )
}

/// The same answer as [`error_response`], as the bytes of a complete
/// HTTP/1.1 response that closes the connection: for requests refused
/// below hyper ([`crate::gate`]), which never become a `Request`.
pub fn raw_error_response(reason: ErrorReason, request_id: &HeaderValue) -> Vec<u8> {
    let status = status_of(reason);
    let text = error_text(reason);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\n{X_LEVEE_ERROR}: {}\r\nx-request-id: ",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            reason.as_str(),
        )
        .as_bytes(),
    );
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(
        format!(
            "\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn every_reason_has_a_status_header_and_retry_after_for_503_and_429() {
        for reason in ErrorReason::ALL {
            let resp = error_response(reason);
            assert_eq!(resp.status(), status_of(reason));
            assert_eq!(resp.headers()[X_LEVEE_ERROR], reason.as_str());
            let retry = matches!(
                resp.status(),
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
            );
            assert_eq!(resp.headers().contains_key(RETRY_AFTER), retry);
            assert!(resp.status().is_client_error() || resp.status().is_server_error());
        }
    }

    #[test]
    fn a_known_wait_becomes_the_retry_after() {
        let e = ProxyError::new(ErrorReason::RateLimited, "over").retry_after(7);
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[RETRY_AFTER], "7");
        assert_eq!(resp.headers()[X_LEVEE_ERROR], "rate-limited");
    }
}
