//! The processes the harness starts (proxies), and what /proc says about
//! them: CPU time (utime + stime), time spent runnable but waiting for a
//! CPU, and resident memory, summed over a process and its descendants
//! (nginx and HAProxy run a master and workers).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ppid (4), ... utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The parent pid from the text of `/proc/PID/stat`.
pub fn stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Nanoseconds spent waiting on a run queue (runnable, not running), the
/// second field of `/proc/PID/task/TID/schedstat`.
pub fn schedstat_wait_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// CPU microseconds per request from a tick delta.
pub fn cpu_us_per_request(ticks: u64, ticks_per_sec: u64, requests: u64) -> Option<f64> {
    if requests == 0 || ticks_per_sec == 0 {
        return None;
    }
    Some(ticks as f64 * 1e6 / ticks_per_sec as f64 / requests as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux port that
/// does not say otherwise).
pub fn ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// `pid` and all its descendants, read from /proc.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(pp) = std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .as_deref()
                .and_then(stat_ppid)
            {
                parents.push((p, pp));
            }
        }
    }
    descendants(pid, &parents)
}

/// `root` and every pid whose parent chain leads to it, from (pid, ppid) pairs.
pub fn descendants(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU ticks of a process tree (processes that exited in between are lost,
/// so measurements never span a reload).
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| stat_cpu_ticks(&s))
        .sum()
}

/// Time the threads of a process tree waited for a CPU while runnable, in
/// nanoseconds (0 where the kernel keeps no schedstats). Over a run, it
/// tells how much other work on the proxy's CPU took from it: a latency
/// tail with a large wait is the machine's, not the proxy's.
pub fn tree_runq_wait_ns(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/task")).ok())
        .flat_map(|tasks| tasks.flatten())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| schedstat_wait_ns(&s))
        .sum()
}

/// Resident memory of a process tree, in KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    process_tree(pid)
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| status_rss_kib(&s))
        .sum()
}

/// Pins every thread of this process (and so the threads and processes it
/// starts later) to `cpu`, with util-linux's `taskset`.
pub fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-cp",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset could not pin the harness to CPU {cpu}");
    }
    Ok(())
}

/// The pids of the proxies started and not yet stopped, so that a harness
/// stopped by a signal (which runs no `Drop`) can stop them too rather than
/// leave them on the ports the next run will measure.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Sends `SIGTERM` to every proxy still running and its workers. For the
/// harness's own signal handler.
pub fn terminate_running() {
    let pids = match RUNNING.lock() {
        Ok(pids) => pids.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for pid in pids.into_iter().flat_map(process_tree) {
        let _ = Command::new("kill")
            .args(["-TERM".to_owned(), pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn running(update: impl FnOnce(&mut Vec<u32>)) {
    match RUNNING.lock() {
        Ok(mut pids) => update(&mut pids),
        Err(poisoned) => update(&mut poisoned.into_inner()),
    }
}

/// A started proxy; stopped (SIGTERM, then SIGKILL for the whole tree after
/// 5 s) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `program args`, on CPU `pin` when given, output to `log`.
    pub fn start(
        program: &Path,
        args: &[&str],
        pin: Option<usize>,
        log: &Path,
    ) -> anyhow::Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match pin {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(program);
                c
            }
            None => Command::new(program),
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        running(|pids| pids.push(child.id()));
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`HUP`, `USR2`, `TERM`) with `kill`.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .stderr(Stdio::null())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed", self.pid());
        }
        Ok(())
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        running(|pids| pids.retain(|&p| p != pid));
        let tree = process_tree(pid);
        let _ = self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Still running after 5 s: kill it and the workers it started.
        for pid in tree {
            let _ = Command::new("kill")
                .args(["-KILL".to_owned(), pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (levee (worker) x) S 1 4242 4242 0 -1 4194560 2269 0 0 0 \
                        731 129 0 0 20 0 3 0 123456 123456789 2048 18446744073709551615";

    #[test]
    fn cpu_ticks_count_from_the_last_parenthesis() {
        assert_eq!(stat_cpu_ticks(STAT), Some(731 + 129));
        assert_eq!(stat_ppid(STAT), Some(1));
        assert_eq!(stat_cpu_ticks("42 (x) S 1"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tlevee\nVmPeak:\t  9000 kB\nVmRSS:\t    8123 kB\nThreads:\t3\n";
        assert_eq!(status_rss_kib(status), Some(8123));
        assert_eq!(status_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn run_queue_wait_from_schedstat() {
        assert_eq!(schedstat_wait_ns("1927381 55210 31\n"), Some(55210));
        assert_eq!(schedstat_wait_ns("1927381\n"), None);
    }

    #[test]
    fn cpu_per_request() {
        // 50 ticks at 100 Hz = 0.5 s over 100,000 requests = 5 µs each.
        assert_eq!(cpu_us_per_request(50, 100, 100_000), Some(5.0));
        assert_eq!(cpu_us_per_request(50, 100, 0), None);
    }

    #[test]
    fn descendants_follow_the_parent_chain() {
        let parents = [(10, 1), (11, 10), (12, 10), (13, 11), (20, 1), (21, 20)];
        let mut tree = descendants(10, &parents);
        tree.sort_unstable();
        assert_eq!(tree, vec![10, 11, 12, 13]);
        assert_eq!(descendants(99, &parents), vec![99]);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(tree_rss_kib(me) > 0);
        assert!(process_tree(me).contains(&me));
    }
}
