//! The parking lot: one per worker, where idle plain-TCP HTTP/1
//! connections wait for their client's next request without a task.
//!
//! A proxy in front of browsers and mobile clients holds many idle
//! keep-alive connections (100,000 is ordinary): what each costs while idle
//! decides the memory. A parked connection in a task of its own still pays
//! for the task (about 540 bytes), tokio's registration of its socket
//! (about 180) and what the task holds to resume. In the lot it is an entry
//! of under 100 bytes besides the kernel's socket:
//!
//! ```text
//! connection task ──park──▶ Lot: socket out of tokio, into the lot's epoll
//!   (its task ends)          entries: socket, peer, max_connections slot
//!                            expiry:  (deadline, key) in a heap, one timer
//!        ▲                          │ readable: back into tokio,
//!        └────── a new task ◀───────┘ served as after an in-task park
//! ```
//!
//! The lot's epoll set sits in tokio's as one [`AsyncFd`]. A connection
//! expires `idle_timeout` after its last request began or ended, as in its
//! task. A drain closes the parked connections at once, except those whose
//! client already sent bytes: they are woken to be answered, with
//! `Connection: close`. Once draining, the lot takes no more connections:
//! one that parks after that waits in its own task, as a TLS connection
//! always does (rustls's state cannot be dropped between requests).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::{sleep_until, Instant};
use tracing::{trace, warn};

use crate::connection::{self, Conn, Start};
use crate::headers::Scheme;
use crate::server::{ConnSettings, ConnSlot};
use crate::state::Shared;

/// Readiness events taken from the lot's epoll set at once.
const EVENTS: usize = 256;

/// One worker's parked connections; see the module doc.
pub(crate) struct Lot {
    epoll: AsyncFd<EpollSet>,
    parked: Mutex<Parked>,
    /// A connection parked that expires before the lot's timer fires.
    sooner: Notify,
    shared: Arc<Shared>,
    worker: usize,
}

/// A connection the lot holds: what resuming it needs, nothing more.
struct Entry {
    stream: std::net::TcpStream,
    /// Tells this entry from earlier ones with the same key.
    generation: u32,
    peer: SocketAddr,
    slot: ConnSlot,
}

/// The lot's entries and their expiry.
#[derive(Default)]
struct Parked {
    entries: Slab<Entry>,
    /// (deadline, generation, key), soonest first; an entry that woke or
    /// closed leaves its expiry behind, skipped by its generation.
    expiry: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    generation: u32,
    /// Draining (or the lot failed): it takes no more connections.
    closed: bool,
}

/// The epoll set, as tokio registers it: it owns its fd, and `as_raw_fd`
/// always gives that one.
struct EpollSet(Epoll);

impl AsRawFd for EpollSet {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

/// A parked connection the lot did not take (it is draining).
pub(crate) struct Refused {
    pub stream: TcpStream,
    pub slot: ConnSlot,
}

/// What became of a parked entry whose socket the lot looked at.
enum Seen {
    /// The client sent bytes: serve them.
    Bytes,
    /// The client closed, or the socket failed.
    Gone,
    /// Nothing yet.
    Quiet,
}

impl Lot {
    /// Must be called on the worker's runtime, which will run [`Lot::run`].
    pub(crate) fn new(shared: Arc<Shared>, worker: usize) -> io::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        // Deprecated for any `T` whose fd may change or close under the
        // registration; `EpollSet` owns its fd, never replaced, for as long
        // as the `AsyncFd` lives (the safe form of tokio's `unsafe register`).
        #[allow(deprecated)]
        let epoll = AsyncFd::new(EpollSet(epoll))?;
        Ok(Self {
            epoll,
            parked: Mutex::new(Parked::default()),
            sooner: Notify::new(),
            shared,
            worker,
        })
    }

    fn parked(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many connections are parked here.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.parked().entries.len()
    }

    /// Takes an idle connection until its client sends again or
    /// `deadline` passes. A draining lot gives it back.
    pub(crate) fn park(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: ConnSlot,
        deadline: Instant,
    ) -> Result<(), Refused> {
        let mut parked = self.parked();
        let key = parked.entries.vacant_key();
        let Ok(short_key) = u32::try_from(key) else {
            return Err(Refused { stream, slot });
        };
        if parked.closed {
            return Err(Refused { stream, slot });
        }
        // Out of tokio's epoll set, into the lot's: level-triggered, so
        // bytes that arrived meanwhile are reported at once.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                trace!(%peer, error = %e, "cannot park a client connection; closing it");
                return Ok(());
            }
        };
        parked.generation = parked.generation.wrapping_add(1);
        let generation = parked.generation;
        let event = EpollEvent::new(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP,
            u64::from(generation) << 32 | u64::from(short_key),
        );
        if let Err(e) = self.epoll.get_ref().0.add(&stream, event) {
            trace!(%peer, error = %e, "cannot park a client connection; closing it");
            return Ok(());
        }
        let sooner = parked
            .expiry
            .peek()
            .is_none_or(|Reverse((at, ..))| deadline < *at);
        parked.entries.insert(Entry {
            stream,
            generation,
            peer,
            slot,
        });
        parked
            .expiry
            .push(Reverse((deadline, generation, short_key)));
        drop(parked);
        if sooner {
            self.sooner.notify_one();
        }
        Ok(())
    }

    /// Wakes parked connections as their clients send, closes them as
    /// they expire, until `shutdown` drains the lot.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut settings = ConnSettings::of(&self.shared.state().config.server);
        let mut events = vec![EpollEvent::empty(); EVENTS];
        let mut woken = Vec::new();
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            let next = self.parked().expiry.peek().map(|Reverse((at, ..))| *at);
            if let Some(at) = next {
                if at != timer.deadline() {
                    timer.as_mut().reset(at);
                }
            }
            tokio::select! {
                ready = self.epoll.readable() => {
                    let mut guard = match ready {
                        Ok(guard) => guard,
                        Err(e) => {
                            warn!(worker = self.worker, error = %e, "the parking lot failed: its idle connections close, new ones wait in their tasks");
                            self.close(&mut settings, &shutdown);
                            return;
                        }
                    };
                    let n = match guard.get_inner().0.wait(&mut events, EpollTimeout::ZERO) {
                        Ok(n) => n,
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(e) => {
                            warn!(worker = self.worker, error = %e, "the parking lot failed: its idle connections close, new ones wait in their tasks");
                            self.close(&mut settings, &shutdown);
                            return;
                        }
                    };
                    if n < events.len() {
                        guard.clear_ready();
                    }
                    self.ready(&events[..n], &mut woken);
                    for entry in woken.drain(..) {
                        self.resume(entry, &mut settings, &shutdown, false);
                    }
                }
                () = timer.as_mut(), if next.is_some() => self.expire(Instant::now()),
                () = self.sooner.notified() => {}
                // A dropped sender means the server is gone: drain as well.
                _ = shutdown.changed() => {
                    self.close(&mut settings, &shutdown);
                    return;
                }
            }
        }
    }

    /// Takes out the entries whose sockets are readable: those with bytes
    /// go to `woken`, those closed are dropped.
    fn ready(&self, events: &[EpollEvent], woken: &mut Vec<Entry>) {
        let mut parked = self.parked();
        for event in events {
            let data = event.data();
            let key = (data & u64::from(u32::MAX)) as usize;
            let generation = (data >> 32) as u32;
            let Some(entry) = parked.entries.get(key) else {
                continue;
            };
            if entry.generation != generation {
                continue;
            }
            let seen = seen(&entry.stream);
            if matches!(seen, Seen::Quiet) {
                continue;
            }
            let entry = parked.entries.remove(key);
            let _ = self.epoll.get_ref().0.delete(&entry.stream);
            if matches!(seen, Seen::Bytes) {
                woken.push(entry);
            }
        }
        parked.compact();
    }

    /// Closes the connections idle past their deadline.
    fn expire(&self, now: Instant) {
        let mut parked = self.parked();
        while let Some(&Reverse((at, generation, key))) = parked.expiry.peek() {
            if at > now {
                break;
            }
            parked.expiry.pop();
            let key = key as usize;
            if parked
                .entries
                .get(key)
                .is_some_and(|e| e.generation == generation)
            {
                let entry = parked.entries.remove(key);
                let _ = self.epoll.get_ref().0.delete(&entry.stream);
                trace!(peer = %entry.peer, "closing idle client connection");
            }
        }
    }

    /// Takes no more connections, and lets go of those parked: a client
    /// that already sent bytes is answered (draining), the others are
    /// closed.
    fn close(self: &Arc<Self>, settings: &mut ConnSettings, shutdown: &watch::Receiver<bool>) {
        let entries = {
            let mut parked = self.parked();
            parked.closed = true;
            parked.expiry.clear();
            std::mem::take(&mut parked.entries)
        };
        for (_, entry) in entries {
            let _ = self.epoll.get_ref().0.delete(&entry.stream);
            if matches!(seen(&entry.stream), Seen::Bytes) {
                self.resume(entry, settings, shutdown, true);
            }
        }
    }

    /// Serves a woken connection in a task of its own again, with the
    /// settings of the live config.
    fn resume(
        self: &Arc<Self>,
        entry: Entry,
        settings: &mut ConnSettings,
        shutdown: &watch::Receiver<bool>,
        draining: bool,
    ) {
        let Entry {
            stream, peer, slot, ..
        } = entry;
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                trace!(%peer, error = %e, "cannot resume a parked client connection");
                return;
            }
        };
        settings.refresh(&self.shared);
        let conn = Conn {
            protocols: Arc::clone(&settings.protocols),
            shared: Arc::clone(&self.shared),
            worker: self.worker,
            peer,
            scheme: Scheme::Http,
            idle_timeout: settings.server.idle_timeout,
        };
        tokio::spawn(connection::serve(
            conn,
            stream,
            shutdown.clone(),
            slot,
            Some(Arc::clone(self)),
            Start::Resumed { draining },
        ));
    }
}

impl Parked {
    /// Drops the expiry of entries gone, once they outnumber the live ones
    /// (a connection that parks often leaves one per park).
    fn compact(&mut self) {
        if self.expiry.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.expiry.retain(|Reverse((_, generation, key))| {
                entries
                    .get(*key as usize)
                    .is_some_and(|e| e.generation == *generation)
            });
        }
    }
}

/// Looks at a parked socket without reading from it.
fn seen(stream: &std::net::TcpStream) -> Seen {
    match stream.peek(&mut [0u8; 1]) {
        Ok(0) => Seen::Gone,
        Ok(_) => Seen::Bytes,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Seen::Quiet,
        Err(_) => Seen::Gone,
    }
}

#[cfg(test)]
#[path = "parking_tests.rs"]
mod tests;
