//! Bytes on their way to a client: a response head, body data framed as
//! its encoder wants, gathered so that the frames a body has ready go out
//! in one vectored write (as hyper queues them), and a write buffer that
//! goes back to the worker once written.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write as _};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

use super::response::Encoder;

/// Data below this is copied behind what is written before it; larger data
/// goes as its own slice of a vectored write.
const COPY_BELOW: usize = 1024;
/// Most bytes gathered before a write.
pub(super) const GATHER_MAX: usize = 64 * 1024;
/// Most data slices gathered before a write (with the owned bytes between
/// them, well within the kernel's iovec limit).
pub(super) const MAX_SLICES: usize = 16;
/// The largest write buffer kept spare.
const SPARE_MAX: usize = 64 * 1024;

thread_local! {
    /// One spare write buffer per worker thread: a response head is encoded
    /// into it and it comes back once written, so that a connection keeps
    /// no write buffer between responses and a busy worker allocates none.
    static SPARE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// Likewise the queue of data slices gathered for one write.
    static SPARE_DATAS: std::cell::Cell<VecDeque<(usize, Bytes)>> =
        const { std::cell::Cell::new(VecDeque::new()) };
}

/// See the module doc.
#[derive(Default)]
pub(super) struct Out {
    /// Owned bytes: the head, chunk-size lines and CRLFs, small data.
    pub(super) head: Vec<u8>,
    /// Of `head`, written.
    at: usize,
    /// Data that goes right after `head[..pos]`, in order.
    datas: VecDeque<(usize, Bytes)>,
    /// Data bytes not written yet.
    pending: usize,
    /// The body's last bytes are in (or out).
    pub(super) ended: bool,
    /// Written, not flushed yet.
    flushing: bool,
}

impl Out {
    /// A buffer for a response head: the worker's spare if it has one.
    pub(super) fn for_head(capacity: usize) -> Self {
        let mut out = Self::default();
        out.own(capacity);
        out
    }

    /// The owned buffer, from the worker's spare when there is none.
    fn own(&mut self, capacity: usize) -> &mut Vec<u8> {
        if self.head.capacity() == 0 {
            self.head = SPARE.take();
        }
        self.head.reserve(capacity);
        &mut self.head
    }

    pub(super) fn is_empty(&self) -> bool {
        self.at == self.head.len() && self.datas.is_empty()
    }

    /// Written and flushed.
    pub(super) fn is_done(&self) -> bool {
        self.is_empty() && !self.flushing
    }

    /// Whether more frames may be gathered before a write.
    pub(super) fn has_room(&self) -> bool {
        !self.ended
            && self.head.len() - self.at + self.pending < GATHER_MAX
            && self.datas.len() < MAX_SLICES
    }

    /// Frames `data` as `encoder` wants (bytes past a Content-Length are
    /// dropped, as no client would read them). `vectored`: the stream
    /// takes vectored writes; else all data is copied, for one write.
    pub(super) fn data(&mut self, encoder: &mut Encoder, mut data: Bytes, vectored: bool) {
        if data.is_empty() {
            return;
        }
        let chunked = *encoder == Encoder::Chunked;
        if let Encoder::Length(left) = encoder {
            let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
            data.truncate(n);
            *left -= n as u64;
            if *left == 0 {
                self.ended = true;
            }
        }
        let copy = !vectored || data.len() < COPY_BELOW;
        let head = self.own(if copy { data.len() + 16 } else { 16 });
        if chunked {
            let _ = write!(head, "{:X}\r\n", data.len());
        }
        if copy {
            head.extend_from_slice(&data);
        } else {
            let at = head.len();
            self.pending += data.len();
            if self.datas.capacity() == 0 {
                self.datas = SPARE_DATAS.take();
            }
            self.datas.push_back((at, data));
        }
        if chunked {
            self.own(2).extend_from_slice(b"\r\n");
        }
    }

    /// The body ended; false if it ended short of its Content-Length.
    pub(super) fn end(&mut self, encoder: Encoder) -> bool {
        self.ended = true;
        match encoder {
            Encoder::Chunked => {
                self.own(5).extend_from_slice(b"0\r\n\r\n");
                true
            }
            Encoder::Length(left) => left == 0,
            Encoder::Close => true,
        }
    }

    /// Writes everything out and flushes.
    pub(super) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [IoSlice::new(&[]); 2 * MAX_SLICES + 1];
            let mut k = 0;
            let mut from = self.at;
            for (pos, data) in &self.datas {
                if *pos > from {
                    slices[k] = IoSlice::new(&self.head[from..*pos]);
                    k += 1;
                    from = *pos;
                }
                slices[k] = IoSlice::new(data);
                k += 1;
            }
            if from < self.head.len() {
                slices[k] = IoSlice::new(&self.head[from..]);
                k += 1;
            }
            // One slice goes as a plain write: on a socket that is send(2),
            // which costs the kernel less than writev(2) of one iovec.
            let n = if k == 1 {
                ready!(Pin::new(&mut *io).poll_write(cx, &slices[0]))?
            } else {
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.flushing = true;
            self.advance(n);
        }
        if !self.flushing {
            return Poll::Ready(Ok(()));
        }
        ready!(Pin::new(&mut *io).poll_flush(cx))?;
        self.flushing = false;
        // Written out: the buffers go back to the worker.
        let mut head = std::mem::take(&mut self.head);
        self.at = 0;
        if head.capacity() > 0 && head.capacity() <= SPARE_MAX {
            head.clear();
            SPARE.set(head);
        }
        let datas = std::mem::take(&mut self.datas);
        if datas.capacity() > 0 {
            SPARE_DATAS.set(datas);
        }
        Poll::Ready(Ok(()))
    }

    /// `n` bytes went out, in order.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let next = self.datas.front().map_or(self.head.len(), |(pos, _)| *pos);
            let owned = (next - self.at).min(n);
            self.at += owned;
            n -= owned;
            if self.at < next {
                return;
            }
            let Some((_, data)) = self.datas.front_mut() else {
                return;
            };
            let taken = data.len().min(n);
            data.advance(taken);
            self.pending -= taken;
            n -= taken;
            if data.is_empty() {
                self.datas.pop_front();
            }
        }
    }
}
