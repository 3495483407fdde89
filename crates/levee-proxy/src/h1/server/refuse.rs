//! A head the gate refused: counted, answered with levee's own response
//! and reason, logged once the answer is out (or the connection gone), and
//! the connection closed with a lingering drain of what the client still
//! sends, so that the close does not reset the connection before the
//! client read the answer (as nginx does).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{ClientIo, Env};
use crate::access_log::RefusedHead;
use crate::error::{raw_error_response, status_of};
use crate::gate::Violation;

/// How long, and how many bytes, a refused client is drained after its
/// answer.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// The answer's progress, logged when it drops: only then is it known how
/// much went out.
struct Logged {
    log: Option<RefusedHead>,
    written: usize,
    len: usize,
    /// Where the answer's body starts, for the log's `bytes_out`.
    body_at: usize,
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(log) = &self.log {
            let sent = self.written.saturating_sub(self.body_at);
            log.write(sent as u64, self.written == self.len);
        }
    }
}

/// Refuses the head at the start of `held` (as far as it arrived) for `v`.
pub(super) async fn refuse<I: ClientIo>(mut io: I, held: BytesMut, v: Violation, env: Env<'_>) {
    let reason = v.reason();
    let answer = {
        let state = env.shared.state();
        let unrouted = &state.topology.unrouted;
        unrouted.record_error(reason);
        unrouted.record_status(status_of(reason).as_u16());
        tracing::debug!(reason = reason.as_str(), detail = %v, "request refused by the gate");
        let id = crate::headers::new_request_id();
        let log = RefusedHead::new(&state, &held, env.peer, &id, reason);
        let answer = raw_error_response(reason, &id);
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        (
            answer,
            Logged {
                log,
                written: 0,
                len: 0,
                body_at,
            },
        )
    };
    let (answer, mut logged) = answer;
    logged.len = answer.len();
    drop(held);
    while logged.written < answer.len() {
        match io.write(&answer[logged.written..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => logged.written += n,
        }
    }
    if io.flush().await.is_err() {
        return;
    }
    drop(logged);
    linger(io, BytesMut::new()).await;
}

/// Shuts the connection's sending side, then drains what the client
/// still sends for a while before closing.
pub(super) async fn linger<I: ClientIo>(mut io: I, mut buf: BytesMut) {
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained <= LINGER_BYTES {
            buf.clear();
            buf.reserve(4096);
            match io.read_buf(&mut buf).await {
                Ok(n) if n > 0 => drained += n,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
