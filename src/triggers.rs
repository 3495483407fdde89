//! What asks for a config hot reload: `SIGHUP` (unix only) and changes to the
//! config file.
//!
//! Each `SIGHUP` is one [`Trigger::Signal`], at once. File changes come in
//! bursts (an editor's save, a rename into place, a Kubernetes ConfigMap
//! swap), so they are debounced: one [`Trigger::FileChanged`] once no further
//! event has come for the debounce period after the last one, so the reload
//! reads the finished file, once.
//!
//! The watch is on the file's directory, not the file: a rename into place or
//! a symlink swap replaces the directory entry, and a watch on the old file
//! would see nothing of it.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The process got `SIGHUP`.
    Signal,
    /// The config file, or a `..`-named entry beside it (Kubernetes'
    /// `..data` symlink), changed.
    FileChanged,
}

/// Room for triggers not yet taken. When full, new ones are dropped: a
/// queued trigger already makes the reload read the latest file.
const QUEUE: usize = 16;

/// The live triggers. Dropping this stops the watch and the signal listener.
pub struct ReloadTriggers {
    rx: mpsc::Receiver<Trigger>,
    tasks: Vec<JoinHandle<()>>,
    // Held so notify's thread keeps watching; dropping it ends the watch.
    _watcher: RecommendedWatcher,
}

impl ReloadTriggers {
    /// The next trigger. `None` only if every source has stopped, which does
    /// not happen while this value lives.
    pub async fn next(&mut self) -> Option<Trigger> {
        self.rx.recv().await
    }
}

impl Drop for ReloadTriggers {
    fn drop(&mut self) {
        // The signal task would otherwise wait for one more SIGHUP to notice.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts watching: `SIGHUP` (unix) and changes to the config file at `path`.
///
/// Must be called from inside a tokio runtime with IO and time enabled.
/// Yields one [`Trigger::FileChanged`] per burst of file events, after
/// `debounce` without a further event, and one [`Trigger::Signal`] per
/// `SIGHUP`. The file need not exist yet; its directory must.
pub fn watch(path: &Path, debounce: Duration) -> anyhow::Result<ReloadTriggers> {
    let runtime = tokio::runtime::Handle::try_current()
        .context("watching the config needs a running tokio runtime")?;
    let name = path
        .file_name()
        .with_context(|| format!("config path {} names no file", path.display()))?
        .to_owned();
    // The parent of a bare "levee.toml" is "": the current directory.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut tasks = Vec::new();

    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
        let tx = tx.clone();
        tasks.push(runtime.spawn(async move {
            while hangup.recv().await.is_some() {
                if !offer(&tx, Trigger::Signal) {
                    break;
                }
            }
        }));
    }

    // notify calls back on its own thread; an unbounded sender may be used
    // from any thread without blocking it.
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<Event>| match event {
        Ok(event) => {
            if is_config_change(&event, &name) {
                let _ = events_tx.send(());
            }
        }
        Err(e) => tracing::warn!(error = %e, "watching the config file"),
    })
    .context("cannot start watching the config file");
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            tasks.iter().for_each(JoinHandle::abort);
            return Err(e);
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tasks.iter().for_each(JoinHandle::abort);
        return Err(e)
            .with_context(|| format!("cannot watch {} for config changes", dir.display()));
    }
    tasks.push(runtime.spawn(debounced(events_rx, debounce, tx)));

    Ok(ReloadTriggers {
        rx,
        tasks,
        _watcher: watcher,
    })
}

/// Whether an event in the config's directory counts as a change of the
/// config file.
fn is_config_change(event: &Event, name: &OsStr) -> bool {
    // Events were lost (inotify queue overflow): ours may have been one.
    if event.need_rescan() {
        return true;
    }
    let changes = match event.kind {
        // A close after writing is where a write ends: the debounce must not
        // run out before it.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        // Opens and reads, levee's own reload among them, change nothing;
        // counting them would make each reload trigger the next.
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
        EventKind::Other => false,
    };
    changes
        && event.paths.iter().any(|path| {
            path.file_name().is_some_and(|file| {
                // Kubernetes swaps a ConfigMap by renaming a new `..data`
                // symlink over the old one; the file's own name sees nothing.
                file == name || file.as_encoded_bytes().starts_with(b"..")
            })
        })
}

/// Turns bursts of file events into one [`Trigger::FileChanged`] each, sent
/// once `quiet` has passed without another event (or the events end). Kept
/// apart from notify so that it can be tested with paused time.
async fn debounced(
    mut events: mpsc::UnboundedReceiver<()>,
    quiet: Duration,
    out: mpsc::Sender<Trigger>,
) {
    while events.recv().await.is_some() {
        // Each event restarts the wait.
        while let Ok(Some(())) = tokio::time::timeout(quiet, events.recv()).await {}
        if !offer(&out, Trigger::FileChanged) {
            return;
        }
    }
}

/// Queues a trigger without waiting on a slow reader. False once nobody
/// listens.
fn offer(out: &mpsc::Sender<Trigger>, trigger: Trigger) -> bool {
    match out.try_send(trigger) {
        Ok(()) | Err(TrySendError::Full(_)) => true,
        Err(TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::PathBuf;

    use notify::event::{CreateKind, DataChange, Flag, ModifyKind, RenameMode};
    use tokio::time::{sleep, timeout, Instant};

    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(200);

    /// Sends `n` events `gap` apart; returns when the last was sent.
    async fn burst(events: &mpsc::UnboundedSender<()>, n: usize, gap: Duration) -> Instant {
        for i in 0..n {
            if i > 0 {
                sleep(gap).await;
            }
            events.send(()).unwrap();
        }
        Instant::now()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_gives_one_trigger_debounce_after_its_last_event() {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (out, mut triggers) = mpsc::channel(QUEUE);
        tokio::spawn(debounced(events_rx, DEBOUNCE, out));

        let last = burst(&events, 5, Duration::from_millis(10)).await;
        assert_eq!(triggers.recv().await, Some(Trigger::FileChanged));
        let waited = last.elapsed();
        assert!(
            waited >= DEBOUNCE && waited <= DEBOUNCE + Duration::from_millis(5),
            "trigger came {waited:?} after the last event"
        );
        // Nothing more, however long we wait (paused time makes this quick).
        assert!(timeout(Duration::from_secs(60), triggers.recv())
            .await
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bursts_apart_by_more_than_debounce_give_one_trigger_each() {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (out, mut triggers) = mpsc::channel(QUEUE);
        let task = tokio::spawn(debounced(events_rx, DEBOUNCE, out));

        burst(&events, 5, Duration::from_millis(10)).await;
        sleep(DEBOUNCE + Duration::from_millis(100)).await;
        burst(&events, 5, Duration::from_millis(10)).await;
        sleep(DEBOUNCE + Duration::from_millis(100)).await;
        drop(events);
        task.await.unwrap();

        let mut got = Vec::new();
        while let Some(trigger) = triggers.recv().await {
            got.push(trigger);
        }
        assert_eq!(got, [Trigger::FileChanged, Trigger::FileChanged]);
    }

    #[test]
    fn only_changes_to_the_config_or_dot_dot_entries_count() {
        let name = OsStr::new("levee.toml");
        let event = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));

        assert!(is_config_change(
            &event(write, "/etc/levee/levee.toml"),
            name
        ));
        assert!(is_config_change(
            &event(EventKind::Create(CreateKind::File), "/etc/levee/..data"),
            name
        ));
        assert!(is_config_change(
            &event(
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                "/etc/levee/.levee.toml.tmp"
            )
            .add_path(PathBuf::from("/etc/levee/levee.toml")),
            name
        ));
        assert!(is_config_change(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/levee/levee.toml"
            ),
            name
        ));
        assert!(is_config_change(
            &Event::new(EventKind::Other).set_flag(Flag::Rescan),
            name
        ));

        assert!(!is_config_change(
            &event(write, "/etc/levee/other.toml"),
            name
        ));
        assert!(!is_config_change(
            &event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/etc/levee/levee.toml"
            ),
            name
        ));
        assert!(!is_config_change(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/etc/levee/levee.toml"
            ),
            name
        ));
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!(
                "levee-triggers-{label}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Takes triggers until none has come for a while, so that the next
    /// step starts clean.
    async fn settle(triggers: &mut ReloadTriggers) {
        for _ in 0..20 {
            if timeout(DEBOUNCE * 3, triggers.next()).await.is_err() {
                return;
            }
        }
        panic!("triggers kept coming");
    }

    #[tokio::test]
    async fn writes_renames_and_sighup_trigger_other_files_and_reads_do_not() {
        let dir = TempDir::new("fs");
        let config = dir.0.join("levee.toml");
        std::fs::write(&config, "version = 1\n").unwrap();
        let mut triggers = watch(&config, DEBOUNCE).unwrap();
        let within = Duration::from_secs(3);

        // (a) Written in place.
        std::fs::write(&config, "version = 2\n").unwrap();
        let got = timeout(within, triggers.next()).await;
        assert_eq!(got.ok().flatten(), Some(Trigger::FileChanged), "in place");
        settle(&mut triggers).await;

        // (b) Written beside it and renamed over it, as editors and atomic
        // writers do.
        let temp = dir.0.join(".levee.toml.tmp");
        std::fs::write(&temp, "version = 3\n").unwrap();
        std::fs::rename(&temp, &config).unwrap();
        let got = timeout(within, triggers.next()).await;
        assert_eq!(got.ok().flatten(), Some(Trigger::FileChanged), "rename");
        settle(&mut triggers).await;

        // (c) Another file in the same directory.
        std::fs::write(dir.0.join("other.toml"), "x = 1\n").unwrap();
        let got = timeout(Duration::from_millis(500), triggers.next()).await;
        assert!(got.is_err(), "unrelated file gave {got:?}");

        // Reading the config, as the reload does, is no change.
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "version = 3\n");
        let got = timeout(Duration::from_millis(500), triggers.next()).await;
        assert!(got.is_err(), "reading the config gave {got:?}");

        // SIGHUP. The handler is in place since `watch`, so the signal cannot
        // kill the test process.
        #[cfg(unix)]
        {
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("kill -HUP {}", std::process::id()))
                .status()
                .unwrap();
            assert!(status.success());
            let got = timeout(within, triggers.next()).await;
            assert_eq!(got.ok().flatten(), Some(Trigger::Signal), "SIGHUP");
        }
    }
}
