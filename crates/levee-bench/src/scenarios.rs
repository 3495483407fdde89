//! The six scenarios of issue 11. Each starts its app nodes (levee-testkit,
//! in this process), then each proxy in turn with the same nodes, and
//! returns one table and its raw figures.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::Method;
use levee_testkit::{AppNode, Behavior};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::{self, Outcome, Spec};
use crate::procs::{
    cpu_us_per_request, pin_self, ticks_per_sec, tree_cpu_ticks, tree_rss_kib, tree_runq_wait_ns,
};
use crate::proxies::{find_program, Kind, Programs, Running, Setup};
use crate::summary::{fmt_added_us, fmt_count, fmt_share, fmt_us, Latency};
use crate::table::Table;
use crate::Options;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Throughput,
    Latency,
    Idle,
    StuckWrites,
    BadNode,
    Reload,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Idle,
        Scenario::StuckWrites,
        Scenario::BadNode,
        Scenario::Reload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::Idle => "idle",
            Scenario::StuckWrites => "stuck-writes",
            Scenario::BadNode => "bad-node",
            Scenario::Reload => "reload",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown scenario `{s}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Where load goes: straight to a node, or to a running proxy.
enum Target<'a> {
    Direct(SocketAddr),
    Proxy(&'a Running),
}

impl Target<'_> {
    fn name(&self) -> &'static str {
        match self {
            Target::Direct(_) => "direct",
            Target::Proxy(p) => p.kind.name(),
        }
    }
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Direct(a) => *a,
            Target::Proxy(p) => p.setup.listen,
        }
    }
    fn pid(&self) -> Option<u32> {
        match self {
            Target::Direct(_) => None,
            Target::Proxy(p) => Some(p.pid()),
        }
    }
}

/// One measured run: the load's outcomes and, for a proxy, its CPU time
/// (clock ticks), its wait for a CPU and its resident memory at the end.
struct Measured {
    outs: Vec<Outcome>,
    ticks: Option<u64>,
    waited: Option<Duration>,
    rss_kib: Option<u64>,
}

/// State shared by the scenarios of one run.
pub struct Bench {
    pub opts: Options,
    pub skipped: Vec<String>,
    programs: Programs,
    proxies: Vec<Kind>,
    /// App nodes run here (one worker thread).
    nodes_rt: tokio::runtime::Runtime,
    /// The load generator: one thread.
    load_rt: tokio::runtime::Runtime,
    dir: PathBuf,
    hz: u64,
    proxy_cpu: Option<usize>,
}

impl Bench {
    pub fn new(opts: Options) -> anyhow::Result<Bench> {
        anyhow::ensure!(
            opts.levee.is_file(),
            "no levee binary at {} (build it: cargo build --release)",
            opts.levee.display()
        );
        let programs = Programs {
            levee: opts.levee.clone(),
            nginx: find_program("nginx"),
            haproxy: find_program("haproxy"),
        };
        let mut skipped = Vec::new();
        let mut proxies = Vec::new();
        for &k in &opts.proxies {
            let installed = match k {
                Kind::Levee => true,
                Kind::Nginx => programs.nginx.is_some(),
                Kind::Haproxy => programs.haproxy.is_some(),
            };
            if installed {
                proxies.push(k);
            } else {
                skipped.push(format!(
                    "{} (not installed; benches/load/install.sh installs it)",
                    k.name()
                ));
            }
        }
        // Idle connections: this process and the proxy each hold one
        // descriptor per connection.
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let proxy_cpu = if opts.pin && cpus >= 2 {
            pin_self(1)?;
            Some(0)
        } else {
            if opts.pin {
                skipped.push("pinning (one CPU only: proxies, nodes and load share it)".to_owned());
            }
            None
        };
        let dir = work_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let nodes_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-nodes")
            .enable_all()
            .build()?;
        let load_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Bench {
            opts,
            skipped,
            programs,
            proxies,
            nodes_rt,
            load_rt,
            dir,
            hz: ticks_per_sec(),
            proxy_cpu,
        })
    }

    pub fn run(&mut self, scenario: Scenario) -> anyhow::Result<(Table, serde_json::Value)> {
        self.say(&format!("== {}", scenario.name()));
        match scenario {
            Scenario::Throughput => self.throughput(),
            Scenario::Latency => self.latency(),
            Scenario::Idle => self.idle(),
            Scenario::StuckWrites => self.stuck_writes(),
            Scenario::BadNode => self.bad_node(),
            Scenario::Reload => self.reload(),
        }
    }

    fn say(&self, line: &str) {
        if self.opts.progress {
            eprintln!("{line}");
        }
    }

    fn nodes(&self, behaviors: &[Behavior]) -> anyhow::Result<Vec<AppNode>> {
        self.nodes_rt.block_on(async {
            let mut nodes = Vec::new();
            for (i, b) in behaviors.iter().enumerate() {
                nodes.push(AppNode::start(&format!("n{i}"), b.clone()).await?);
            }
            Ok(nodes)
        })
    }

    fn set_behavior(&self, nodes: &[AppNode], b: &Behavior) -> anyhow::Result<()> {
        self.nodes_rt.block_on(async {
            for n in nodes {
                n.set_behavior(b.clone()).await?;
            }
            Ok(())
        })
    }

    fn start(&self, kind: Kind, nodes: &[AppNode]) -> anyhow::Result<Running> {
        let dir = self.dir.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        let setup = Setup {
            listen: free_port()?,
            admin: free_port()?,
            nodes: nodes.iter().map(AppNode::addr).collect(),
            dir,
        };
        self.say(&format!("  starting {}", kind.name()));
        Running::start(kind, setup, &self.programs, self.proxy_cpu)
    }

    /// Runs the specs at once, printing progress every second; with `during`
    /// also runs that future alongside (e.g. reloads).
    fn drive<F: std::future::Future<Output = ()>>(
        &self,
        label: &str,
        specs: Vec<Spec>,
        during: F,
    ) -> Vec<Outcome> {
        let duration = specs.iter().map(|s| s.duration).max().unwrap_or_default();
        let progress = Arc::new(AtomicU64::new(0));
        let show = self.opts.progress;
        let label = label.to_owned();
        self.load_rt.block_on(async {
            let runs: Vec<_> = specs
                .into_iter()
                .map(|s| tokio::spawn(load::run(s, progress.clone())))
                .collect();
            let ticker = {
                let progress = progress.clone();
                tokio::spawn(async move {
                    let start = tokio::time::Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if show {
                            eprintln!(
                                "    {label}: {:.1}/{:.1} s, {} answers",
                                start.elapsed().as_secs_f64(),
                                duration.as_secs_f64(),
                                fmt_count(progress.load(Ordering::Relaxed))
                            );
                        }
                    }
                })
            };
            during.await;
            let mut outs = Vec::new();
            for r in runs {
                outs.push(r.await.unwrap_or_else(|_| Outcome::new()));
            }
            ticker.abort();
            outs
        })
    }

    /// Warm-up, then `specs` with the proxy's CPU time, its wait for a CPU
    /// and its resident memory measured around them.
    fn measure(&self, target: &Target, label: &str, specs: Vec<Spec>) -> Measured {
        if !self.opts.warmup.is_zero() {
            let warm: Vec<Spec> = specs
                .iter()
                .map(|s| Spec {
                    duration: self.opts.warmup,
                    ..s.clone()
                })
                .collect();
            self.drive(&format!("{label} warm-up"), warm, async {});
        }
        let pid = target.pid();
        let before = pid.map(|p| (tree_cpu_ticks(p), tree_runq_wait_ns(p)));
        let outs = self.drive(label, specs, async {});
        let after = pid.map(|p| (tree_cpu_ticks(p), tree_runq_wait_ns(p), tree_rss_kib(p)));
        match (before, after) {
            (Some((t0, w0)), Some((t1, w1, rss))) => Measured {
                outs,
                ticks: Some(t1.saturating_sub(t0)),
                waited: Some(Duration::from_nanos(w1.saturating_sub(w0))),
                rss_kib: Some(rss),
            },
            _ => Measured {
                outs,
                ticks: None,
                waited: None,
                rss_kib: None,
            },
        }
    }

    fn throughput(&self) -> anyhow::Result<(Table, serde_json::Value)> {
        let d = self.opts.duration;
        let mut table = Table::new(
            "1. Throughput (closed loop, GET)",
            &[
                "target",
                "body",
                "conns",
                "req/s",
                "vs direct",
                "p50",
                "p99",
                "p99.9",
                "max",
                "proxy CPU µs/req",
                "waited for CPU",
                "RSS at end",
                "failed",
            ],
        );
        let mut raw = Vec::new();
        let rounds = self.opts.rounds.max(1);
        for body in [64usize, 16 * 1024] {
            let nodes = self.nodes(&[Behavior::Healthy { body_bytes: body }])?;
            let mut targets: Vec<Option<Running>> = vec![None];
            for &k in &self.proxies {
                targets.push(Some(self.start(k, &nodes)?));
            }
            for &conns in &self.opts.conns {
                // Round by round, every target in turn: a slow spell of the
                // machine then falls on all of them, not on one row.
                let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
                for round in 1..=rounds {
                    for (t, runs) in targets.iter().zip(&mut runs) {
                        let target = match t {
                            None => Target::Direct(nodes[0].addr()),
                            Some(r) => Target::Proxy(r),
                        };
                        let mut label = format!("{} {}B x{conns}", target.name(), body);
                        if rounds > 1 {
                            label.push_str(&format!(" round {round}/{rounds}"));
                        }
                        let m = self.measure(
                            &target,
                            &label,
                            vec![Spec::reads(target.addr(), conns, d)],
                        );
                        runs.push(Run::of(m, self.hz));
                    }
                }
                let direct_rps = median(runs[0].iter().map(|r| r.rps));
                for (t, runs) in targets.iter().zip(&runs) {
                    let name = t.as_ref().map_or("direct", |r| r.kind.name());
                    let rps = median(runs.iter().map(|r| r.rps));
                    let cpu = median_some(runs.iter().map(|r| r.cpu));
                    let lat = |f: fn(&Latency) -> u64| {
                        median(runs.iter().map(|r| f(&r.latency) as f64)) as u64
                    };
                    let mut all = Outcome::new();
                    for r in runs {
                        all.merge(&r.outcome);
                    }
                    table.row(vec![
                        name.into(),
                        fmt_bytes(body),
                        conns.to_string(),
                        fmt_count(rps as u64),
                        ratio(rps, direct_rps),
                        fmt_us(lat(|l| l.p50_us)),
                        fmt_us(lat(|l| l.p99_us)),
                        fmt_us(lat(|l| l.p999_us)),
                        fmt_us(lat(|l| l.max_us)),
                        fmt_cpu(cpu, runs),
                        median_some(runs.iter().map(|r| r.waited.map(|w| w.as_secs_f64())))
                            .map_or("-".into(), |w| fmt_ms(Duration::from_secs_f64(w))),
                        runs.iter()
                            .filter_map(|r| r.rss_kib)
                            .max()
                            .map_or("-".into(), |k| fmt_bytes(k as usize * 1024)),
                        fmt_count(all.failed()),
                    ]);
                    raw.push(json!({"target": name, "body_bytes": body, "conns": conns,
                        "cpu_us_per_request": cpu, "load": all.json(),
                        "rounds": runs.iter().map(Run::json).collect::<Vec<_>>()}));
                }
            }
        }
        if rounds > 1 {
            table.note(format!(
                "{rounds} rounds, each target in turn in every round; each figure is the median of its rounds (CPU: median, then the lowest and highest round); failed counts all rounds."
            ));
        }
        table.note(format!(
            "{} s per row and round after {} s of warm-up; one app node; req/s counts 2xx answers; proxy CPU is utime+stime of the proxy's processes per answered request; waited for CPU: how long its threads were runnable but not running (other work on its CPU: a long wait makes a latency tail the machine's); RSS at end: the proxy's processes' VmRSS as the load ends.",
            secs(d),
            secs(self.opts.warmup)
        ));
        self.pin_note(&mut table);
        Ok((table, json!(raw)))
    }

    fn latency(&self) -> anyhow::Result<(Table, serde_json::Value)> {
        let d = self.opts.duration * 2;
        let rate = self.opts.rate;
        let conns = 32;
        let mut table = Table::new(
            format!("2. Latency at a fixed rate ({rate:.0} req/s, GET, 64 B)"),
            &[
                "target",
                "answered/s",
                "p50",
                "p99",
                "p99.9",
                "max",
                "added p50",
                "added p99",
                "added p99.9",
                "waited for CPU",
                "failed",
            ],
        );
        let nodes = self.nodes(&[Behavior::Healthy { body_bytes: 64 }])?;
        let mut raw = Vec::new();
        let mut direct = None;
        let mut kinds: Vec<Option<Kind>> = vec![None];
        kinds.extend(self.proxies.iter().copied().map(Some));
        for k in kinds {
            let running = k.map(|k| self.start(k, &nodes)).transpose()?;
            let target = match &running {
                None => Target::Direct(nodes[0].addr()),
                Some(r) => Target::Proxy(r),
            };
            let spec = Spec {
                rate: Some(rate),
                ..Spec::reads(target.addr(), conns, d)
            };
            let m = self.measure(
                &target,
                &format!("{} at {rate:.0}/s", target.name()),
                vec![spec],
            );
            let o = &m.outs[0];
            let l = o.latency();
            let base = *direct.get_or_insert(l);
            table.row(vec![
                target.name().into(),
                fmt_count(o.ok_per_sec() as u64),
                fmt_us(l.p50_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us),
                added(k, l.p50_us, base.p50_us),
                added(k, l.p99_us, base.p99_us),
                added(k, l.p999_us, base.p999_us),
                m.waited.map_or("-".into(), fmt_ms),
                fmt_count(o.failed()),
            ]);
            raw.push(
                json!({"target": target.name(), "rate": rate, "conns": conns,
                "runq_wait_ms": m.waited.map(|w| w.as_secs_f64() * 1e3), "load": o.json()}),
            );
        }
        table.note(format!(
            "{} s per row, {conns} keep-alive connections, open loop: latency counts from when each request was due, so stalls are charged in full; waited for CPU: how long the proxy's threads were runnable but not running.",
            secs(d)
        ));
        Ok((table, json!(raw)))
    }

    fn idle(&self) -> anyhow::Result<(Table, serde_json::Value)> {
        let n = self.opts.idle_conns;
        let mut table = Table::new(
            format!(
                "3. Idle keep-alive client connections ({} open)",
                fmt_count(n as u64)
            ),
            &[
                "proxy",
                "RSS before",
                "RSS with idle conns",
                "per idle conn",
                "opened",
            ],
        );
        let nodes = self.nodes(&[Behavior::Healthy { body_bytes: 64 }])?;
        let mut raw = Vec::new();
        for &k in &self.proxies {
            let running = self.start(k, &nodes)?;
            let target = Target::Proxy(&running);
            let warm = Spec::reads(target.addr(), 16, Duration::from_millis(500));
            self.drive(&format!("{} warm-up", k.name()), vec![warm], async {});
            std::thread::sleep(Duration::from_millis(500));
            let before = tree_rss_kib(running.pid());
            self.say(&format!("    {}: opening {n} idle connections", k.name()));
            let addr = target.addr();
            let (conns, after) = self.load_rt.block_on(async {
                let conns = open_idle(addr, n).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                let after = tree_rss_kib(running.pid());
                (conns, after)
            });
            let opened = conns.len();
            drop(conns);
            let per = if opened > 0 {
                (after.saturating_sub(before) * 1024) as f64 / opened as f64
            } else {
                0.0
            };
            table.row(vec![
                k.name().into(),
                format!("{:.1} MiB", before as f64 / 1024.0),
                format!("{:.1} MiB", after as f64 / 1024.0),
                format!("{:.0} B", per),
                fmt_count(opened as u64),
            ]);
            raw.push(
                json!({"proxy": k.name(), "rss_before_kib": before, "rss_after_kib": after,
                "bytes_per_conn": per, "opened": opened}),
            );
        }
        table.note("Each connection sent one GET and read its answer, then stayed open; RSS of the proxy's processes 1 s after the last one opened.");
        Ok((table, json!(raw)))
    }

    fn stuck_writes(&self) -> anyhow::Result<(Table, serde_json::Value)> {
        let d = self.opts.duration * 2;
        let write_rate = 20.0;
        let mut table = Table::new(
            "4. Stuck writes (every node hangs POSTs; reads keep working)",
            &[
                "proxy",
                "reads/s",
                "vs no fault",
                "reads p99",
                "vs no fault",
                "write outcomes",
                "admin probe p99",
                "probe max",
                "probe answered by",
            ],
        );
        let nodes = self.nodes(&[
            Behavior::Healthy { body_bytes: 64 },
            Behavior::Healthy { body_bytes: 64 },
            Behavior::Healthy { body_bytes: 64 },
        ])?;
        let mut raw = Vec::new();
        for &k in &self.proxies {
            let running = self.start(k, &nodes)?;
            let addr = running.setup.listen;
            let specs = || {
                vec![
                    Spec::reads(addr, 64, d),
                    Spec {
                        rate: Some(write_rate),
                        ..Spec::writes(addr, 20, d)
                    },
                    Spec {
                        path: "/healthz",
                        rate: Some(10.0),
                        timeout: Duration::from_secs(5),
                        ..Spec::reads(running.setup.admin, 1, d)
                    },
                ]
            };
            let base = self.drive(&format!("{} no fault", k.name()), specs(), async {});
            self.set_behavior(
                &nodes,
                &Behavior::StuckOn {
                    methods: vec![Method::POST],
                },
            )?;
            let stuck = self.drive(&format!("{} stuck writes", k.name()), specs(), async {});
            self.set_behavior(&nodes, &Behavior::Healthy { body_bytes: 64 })?;
            let (r0, r1) = (&base[0], &stuck[0]);
            let (p0, p1) = (r0.latency().p99_us, r1.latency().p99_us);
            let probe = stuck[2].latency();
            table.row(vec![
                k.name().into(),
                fmt_count(r1.ok_per_sec() as u64),
                ratio(r1.ok_per_sec(), r0.ok_per_sec()),
                fmt_us(p1),
                ratio(p1 as f64, p0 as f64),
                stuck[1].outcomes(),
                fmt_us(probe.p99_us),
                fmt_us(probe.max_us),
                k.admin_probe().into(),
            ]);
            raw.push(json!({"proxy": k.name(),
                "no_fault": {"reads": r0.json(), "writes": base[1].json(), "probe": base[2].json()},
                "stuck": {"reads": r1.json(), "writes": stuck[1].json(), "probe": stuck[2].json()}}));
        }
        table.note(format!(
            "Three nodes; {} s with no fault, then {} s with every node hanging POSTs: reads on 64 closed-loop connections, POST /api/ at {write_rate:.0}/s open loop (client gives up after 10 s), the admin probe at 10/s. Every proxy: writes bounded to {} in flight ({} queued) with a {} s deadline.",
            secs(d), secs(d), crate::proxies::WRITE_LIMIT, crate::proxies::WRITE_QUEUE, crate::proxies::WRITE_TIMEOUT_SECS
        ));
        table.note("Ratios are stuck / no fault. nginx's limit_conn has no queue; HAProxy's limit is per server (16 split over the nodes, rounded up).");
        Ok((table, json!(raw)))
    }

    fn bad_node(&self) -> anyhow::Result<(Table, serde_json::Value)> {
        let d = self.opts.duration * 2;
        let mut table = Table::new(
            "5. Bad node (one node of six answering 500)",
            &[
                "proxy",
                "node answers 500 to",
                "reads 5xx",
                "writes 5xx",
                "reads",
                "writes",
                "failed (all)",
            ],
        );
        let variants = [
            (
                "everything",
                Behavior::Status {
                    code: 500,
                    share: 1.0,
                    methods: None,
                },
            ),
            (
                "writes (POST)",
                Behavior::Status {
                    code: 500,
                    share: 1.0,
                    methods: Some(vec![Method::POST]),
                },
            ),
        ];
        let mut raw = Vec::new();
        for (what, bad) in variants {
            for &k in &self.proxies {
                // Fresh nodes per run: no proxy inherits another's warm-up.
                let mut behaviors = vec![Behavior::Healthy { body_bytes: 64 }; 6];
                behaviors[0] = bad.clone();
                let nodes = self.nodes(&behaviors)?;
                let running = self.start(k, &nodes)?;
                let addr = running.setup.listen;
                let outs = self.drive(
                    &format!("{} bad node ({what})", k.name()),
                    vec![Spec::reads(addr, 32, d), Spec::writes(addr, 8, d)],
                    async {},
                );
                let (r, w) = (&outs[0], &outs[1]);
                let r5 = r.count(|s| s >= 500);
                let w5 = w.count(|s| s >= 500);
                table.row(vec![
                    k.name().into(),
                    what.into(),
                    fmt_share(r5, r.answered()),
                    fmt_share(w5, w.answered()),
                    fmt_count(r.answered()),
                    fmt_count(w.answered()),
                    fmt_count(r.failed() + w.failed()),
                ]);
                raw.push(json!({"proxy": k.name(), "bad_node_fails": what, "reads": r.json(), "writes": w.json()}));
            }
        }
        table.note(format!(
            "{} s from the proxy's start: GET on 32 and POST /api/ on 8 closed-loop connections. Without a proxy, 1 request in 6 of the affected kind (16.7%) would fail. Every proxy retries idempotent requests on 500/502/503/504 and takes failing nodes out (levee: breakers; nginx: max_fails; HAProxy: observe layer7 + health checks).",
            secs(d)
        ));
        Ok((table, json!(raw)))
    }

    fn reload(&self) -> anyhow::Result<(Table, serde_json::Value)> {
        let n = self.opts.reloads;
        let every = self.opts.reload_every;
        let d = every * (n as u32 + 1);
        let mut table = Table::new(
            format!("6. Reload under load ({n} reloads)"),
            &[
                "proxy",
                "reload by",
                "answered",
                "failed",
                "outcomes",
                "reconnects",
                "p99",
                "max",
            ],
        );
        let nodes = self.nodes(&[
            Behavior::Healthy { body_bytes: 64 },
            Behavior::Healthy { body_bytes: 64 },
            Behavior::Healthy { body_bytes: 64 },
        ])?;
        let mut raw = Vec::new();
        for &k in &self.proxies {
            let running = self.start(k, &nodes)?;
            let addr = running.setup.listen;
            let mut sent = 0usize;
            let reloads = async {
                for _ in 0..n {
                    tokio::time::sleep(every).await;
                    if running.reload().is_ok() {
                        sent += 1;
                    }
                }
            };
            let outs = self.drive(
                &format!("{} reloading", k.name()),
                vec![Spec::reads(addr, 32, d)],
                reloads,
            );
            let o = &outs[0];
            let how = match k {
                Kind::Levee => "SIGHUP",
                Kind::Nginx => "SIGHUP to master (nginx -s reload)",
                Kind::Haproxy => "SIGUSR2 to master (-W)",
            };
            let l = o.latency();
            table.row(vec![
                k.name().into(),
                how.into(),
                fmt_count(o.answered()),
                fmt_count(o.failed()),
                o.outcomes(),
                fmt_count(o.reconnects),
                fmt_us(l.p99_us),
                fmt_us(l.max_us),
            ]);
            raw.push(json!({"proxy": k.name(), "reloads": sent, "load": o.json()}));
        }
        table.note(format!(
            "GET on 32 closed-loop keep-alive connections for {} s, a reload every {} s; three nodes. failed = non-2xx answers, requests cut on the connection and client timeouts; reconnects = idle keep-alive connections the proxy closed between two requests (reopened, nothing lost).",
            secs(d),
            secs(every)
        ));
        Ok((table, json!(raw)))
    }

    fn pin_note(&self, table: &mut Table) {
        if self.proxy_cpu.is_some() {
            table.note("Each proxy runs one worker pinned to CPU 0; the app node and the load generator share CPU 1.");
        } else {
            table.note("Not pinned: proxies, node and load generator share the CPUs.");
        }
    }
}

impl Drop for Bench {
    /// Configs, pid files and proxy logs are only needed while it runs.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where this process's configs, pid files and proxy logs go: one per
/// harness process, so that runs side by side do not share it.
pub fn work_dir() -> PathBuf {
    std::env::temp_dir().join(format!("levee-bench-{}", std::process::id()))
}

/// Opens up to `n` connections, each sending one GET and reading its whole
/// answer, and returns those that stayed open.
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut open = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(100);
        left -= batch;
        let tasks: Vec<_> = (0..batch)
            .map(|_| tokio::spawn(one_request(addr)))
            .collect();
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                open.push(s);
            }
        }
    }
    open
}

async fn one_request(addr: SocketAddr) -> Option<TcpStream> {
    let work = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(complete) = response_complete(&buf) {
                return complete.then_some(s);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
}

/// `None` while more bytes are needed; `Some(true)` for a whole 200 answer
/// with a Content-Length body, `Some(false)` for anything else.
pub fn response_complete(buf: &[u8]) -> Option<bool> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    if !head.starts_with("HTTP/1.1 200") {
        return Some(false);
    }
    let len = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match len {
        Some(len) if buf.len() >= end + len => Some(true),
        Some(_) => None,
        None => Some(false),
    }
}

/// One throughput measurement of one target.
struct Run {
    outcome: Outcome,
    rps: f64,
    latency: Latency,
    cpu: Option<f64>,
    waited: Option<Duration>,
    rss_kib: Option<u64>,
}

impl Run {
    fn of(m: Measured, hz: u64) -> Run {
        let outcome = m.outs.into_iter().next().unwrap_or_default();
        Run {
            rps: outcome.ok_per_sec(),
            latency: outcome.latency(),
            cpu: m
                .ticks
                .and_then(|t| cpu_us_per_request(t, hz, outcome.answered())),
            waited: m.waited,
            rss_kib: m.rss_kib,
            outcome,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"cpu_us_per_request": self.cpu,
            "runq_wait_ms": self.waited.map(|w| w.as_secs_f64() * 1e3),
            "rss_kib_at_end": self.rss_kib, "load": self.outcome.json()})
    }
}

/// The median (of an even count, the mean of the middle two); 0 if empty.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of the values measured; `None` if none was.
fn median_some(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

/// `18.6`, or with several rounds `18.6 (17.9-19.4)`: the median, then the
/// lowest and highest round, so that a reader sees how much rounds moved.
fn fmt_cpu(median: Option<f64>, runs: &[Run]) -> String {
    let Some(m) = median else {
        return "-".into();
    };
    let all: Vec<f64> = runs.iter().filter_map(|r| r.cpu).collect();
    if all.len() < 2 {
        return format!("{m:.1}");
    }
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.1} ({lo:.1}-{hi:.1})")
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?)
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", x / base)
    } else {
        "-".into()
    }
}

fn added(kind: Option<Kind>, proxy: u64, direct: u64) -> String {
    match kind {
        None => "-".into(),
        Some(_) => fmt_added_us(proxy, direct),
    }
}

fn fmt_bytes(b: usize) -> String {
    if b >= 1024 {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_responses() {
        assert_eq!(response_complete(b"HTTP/1.1 200 OK\r\nContent-Len"), None);
        assert_eq!(
            response_complete(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nab"),
            None
        );
        assert_eq!(
            response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"),
            Some(true)
        );
        assert_eq!(
            response_complete(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
            Some(false)
        );
        assert_eq!(
            response_complete(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(false)
        );
    }

    #[test]
    fn scenario_names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>(), Ok(s));
        }
        assert!("nope".parse::<Scenario>().is_err());
    }

    #[test]
    fn ratios_and_sizes() {
        assert_eq!(ratio(50.0, 100.0), "0.50");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(fmt_bytes(64), "64 B");
        assert_eq!(fmt_bytes(16 * 1024), "16 KiB");
        assert_eq!(added(None, 10, 5), "-");
        assert_eq!(added(Some(Kind::Levee), 150, 100), "+50 µs");
    }

    #[test]
    fn medians_of_rounds() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
        assert_eq!(
            median_some([None, Some(5.0), Some(1.0)].into_iter()),
            Some(3.0)
        );
        assert_eq!(median_some([None, None].into_iter()), None);

        let run = |cpu| Run {
            outcome: Outcome::new(),
            rps: 0.0,
            latency: Latency::default(),
            cpu,
            waited: None,
            rss_kib: None,
        };
        assert_eq!(fmt_cpu(None, &[run(None)]), "-");
        assert_eq!(fmt_cpu(Some(18.62), &[run(Some(18.62))]), "18.6");
        let runs = [run(Some(19.4)), run(Some(17.9)), run(Some(18.6))];
        assert_eq!(fmt_cpu(Some(18.6), &runs), "18.6 (17.9-19.4)");
    }
}
