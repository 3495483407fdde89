//! A client's HTTP/1 request body, read from the socket by the connection
//! as the service asks for it.
//!
//! The body may be polled on another task (an HTTP/2 node connection sends
//! it from its own), so it and the connection share a one-frame slot: the
//! body asks ([`Reader::want`]), the connection reads and decodes what the
//! socket has, and puts one frame in. Nothing is read before it is asked
//! for, and nothing beyond one read is held.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};

use crate::gate::Violation;

/// Why a client's HTTP/1 request body failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the client closed the connection before the body ended")]
    Closed,
    #[error("reading the client's socket failed: {0}")]
    Io(#[source] io::Error),
    #[error("the request body's framing is invalid: {0}")]
    Framing(#[source] Violation),
}

#[derive(Debug, Default)]
struct Slot {
    frame: Option<Bytes>,
    /// The body's end: complete (`Ok`) or failed.
    end: Option<Result<(), ReadError>>,
    /// The body asked for a frame the slot does not have.
    want: bool,
    /// The body was dropped.
    gone: bool,
}

#[derive(Debug, Default)]
struct Shared {
    slot: Mutex<Slot>,
    /// The body's task, waiting for a frame.
    body: AtomicWaker,
    /// The connection's task, waiting for a want.
    conn: AtomicWaker,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic while holding it leaves nothing half-written.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The request body the stack reads.
#[derive(Debug)]
pub struct RequestBody {
    shared: Arc<Shared>,
    /// Bytes still due, for a Content-Length body.
    left: Option<u64>,
}

/// The connection's end of a [`RequestBody`].
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
}

/// A body and the connection's end of it; `len`: its Content-Length.
pub fn channel(len: Option<u64>) -> (Reader, RequestBody) {
    let shared = Arc::new(Shared::default());
    (
        Reader {
            shared: Arc::clone(&shared),
        },
        RequestBody { shared, left: len },
    )
}

/// What the body asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A frame: read and decode.
    Frame,
    /// Nothing now (its waker is registered).
    Nothing,
    /// The body was dropped: nobody reads it any more.
    Gone,
}

impl Reader {
    pub fn want(&self, cx: &mut Context<'_>) -> Want {
        self.shared.conn.register(cx.waker());
        let slot = self.shared.lock();
        if slot.gone {
            Want::Gone
        } else if slot.want && slot.frame.is_none() && slot.end.is_none() {
            Want::Frame
        } else {
            Want::Nothing
        }
    }

    /// Hands the body its next frame (the slot is empty: [`Want::Frame`]).
    pub fn send(&self, data: Bytes) {
        let mut slot = self.shared.lock();
        slot.frame = Some(data);
        slot.want = false;
        drop(slot);
        self.shared.body.wake();
    }

    /// The body ended: complete, or failed.
    pub fn end(self, end: Result<(), ReadError>) {
        let mut slot = self.shared.lock();
        slot.end = Some(end);
        drop(slot);
        self.shared.body.wake();
    }
}

impl Drop for Reader {
    /// The connection went away without ending the body: it fails.
    fn drop(&mut self) {
        let mut slot = self.shared.lock();
        if slot.end.is_none() {
            slot.end = Some(Err(ReadError::Closed));
            drop(slot);
            self.shared.body.wake();
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.shared.lock().gone = true;
        self.shared.conn.wake();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ReadError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ReadError>>> {
        let this = self.get_mut();
        this.shared.body.register(cx.waker());
        let mut slot = this.shared.lock();
        if let Some(data) = slot.frame.take() {
            if let Some(left) = &mut this.left {
                *left = left.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match slot.end.take() {
            Some(Ok(())) => {
                slot.end = Some(Ok(()));
                Poll::Ready(None)
            }
            Some(Err(e)) => {
                // Told once; after it, the body reads as ended.
                slot.end = Some(Ok(()));
                Poll::Ready(Some(Err(e)))
            }
            None => {
                if !slot.want {
                    slot.want = true;
                    drop(slot);
                    this.shared.conn.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.shared.lock();
        slot.frame.is_none() && matches!(slot.end, Some(Ok(())))
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}
