//! The WebSocket echo of [`Behavior::WebSocketEcho`](crate::Behavior::WebSocketEcho):
//! the handshake check and the echo loop on the upgraded connection.

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderMap, Method};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The `Sec-WebSocket-Accept` for a WebSocket handshake, `None` for any
/// other request.
pub(crate) fn accept_key(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let has = |name, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET || !has(CONNECTION, "upgrade") || !has(UPGRADE, "websocket") {
        return None;
    }
    let key = headers.get(SEC_WEBSOCKET_KEY)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

/// Echoes text and binary messages until the client closes, the connection
/// fails, or the node stops (then the socket is dropped without a close).
pub(crate) async fn echo(upgrade: OnUpgrade, mut stopped: watch::Receiver<bool>) {
    let Ok(io) = upgrade.await else {
        return;
    };
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await;
    loop {
        tokio::select! {
            message = ws.next() => match message {
                Some(Ok(m)) if m.is_text() || m.is_binary() => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                // Pings are answered and a close is echoed by tungstenite
                // itself, on the next read.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = stopped.changed() => return,
        }
    }
}
