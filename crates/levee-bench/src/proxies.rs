//! The proxies under test and their configs. Every proxy gets the setup a
//! competent operator would write for these scenarios, the same on all three:
//! one worker, keep-alive to the nodes, logs off; reads on `/`, writes
//! (POST under `/api/`) with a 2 s deadline and at most 16 in flight;
//! idempotent requests retried on another node after a connect error or a
//! 500/502/503/504, nodes that keep failing taken out; an admin probe port.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::procs::Proc;

/// Writes go under this prefix (POST), reads anywhere else.
pub const WRITE_PREFIX: &str = "/api/";
/// Deadline for a write's response headers.
pub const WRITE_TIMEOUT_SECS: u64 = 2;
/// Writes in flight at once (bulkhead), and how many may wait for a slot.
pub const WRITE_LIMIT: usize = 16;
pub const WRITE_QUEUE: usize = 8;
/// Idle keep-alive connections each proxy may keep to the nodes.
pub const UPSTREAM_KEEPALIVE: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Levee,
    Nginx,
    Haproxy,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Levee, Kind::Nginx, Kind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Levee => "levee",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// What answers the admin probe: levee's own admin listener; for the
    /// others the stand-in the config sets up.
    pub fn admin_probe(self) -> &'static str {
        match self {
            Kind::Levee => "admin listener /healthz",
            Kind::Nginx => "second server block, `return 200`",
            Kind::Haproxy => "`monitor-uri` frontend",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown proxy `{s}` (expected levee, nginx or haproxy)"))
    }
}

/// Addresses one proxy run uses.
#[derive(Clone, Debug)]
pub struct Setup {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub nodes: Vec<SocketAddr>,
    /// Where the config, pid and log files go.
    pub dir: PathBuf,
}

pub fn levee_config(s: &Setup) -> String {
    let nodes: Vec<String> = s.nodes.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        r#"# levee-bench: one worker, logs off, same policy as the nginx/HAProxy configs.
[server]
listen = "{listen}"
workers = 1
shutdown_grace = "1s"

[admin]
listen = "{admin}"

[[backend]]
name = "app"
nodes = [{nodes}]
connect_timeout = "500ms"
timeout = "5s"
max_in_flight = 4096
max_queue = 1024
pool_max_idle_per_node = {keepalive}

[backend.retry]
on_statuses = [500, 502, 503, 504]

[[route]]
name = "writes"
path_prefix = "{prefix}"
methods = ["POST", "PUT", "PATCH", "DELETE"]
backend = "app"
timeout = "{wt}s"
max_in_flight = {wl}
max_queue = {wq}
queue_timeout = "50ms"

[[route]]
name = "reads"
path_prefix = "/"
backend = "app"
"#,
        listen = s.listen,
        admin = s.admin,
        nodes = nodes.join(", "),
        keepalive = UPSTREAM_KEEPALIVE,
        prefix = WRITE_PREFIX,
        wt = WRITE_TIMEOUT_SECS,
        wl = WRITE_LIMIT,
        wq = WRITE_QUEUE,
    )
}

pub fn nginx_config(s: &Setup) -> String {
    let mut servers = String::new();
    for n in &s.nodes {
        let _ = writeln!(servers, "    server {n} max_fails=3 fail_timeout=10s;");
    }
    format!(
        r#"# levee-bench: one worker, logs off, same policy as the levee/HAProxy configs.
worker_processes 1;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_timeout 60s;
  keepalive_requests 1000000;
  limit_conn_zone $server_name zone=writes:1m;
  limit_conn_status 503;
  upstream app {{
{servers}    keepalive {keepalive};
    keepalive_requests 1000000;
  }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
  proxy_connect_timeout 500ms;
  proxy_read_timeout 5s;
  proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
  proxy_next_upstream_tries 3;
  server {{
    listen {listen} backlog=4096;
    location {prefix} {{
      limit_conn writes {wl};
      proxy_read_timeout {wt}s;
      proxy_pass http://app;
    }}
    location / {{ proxy_pass http://app; }}
  }}
  server {{
    listen {admin};
    location = /healthz {{ return 200 "ok\n"; }}
  }}
}}
"#,
        dir = s.dir.display(),
        servers = servers,
        keepalive = UPSTREAM_KEEPALIVE,
        listen = s.listen,
        admin = s.admin,
        prefix = WRITE_PREFIX,
        wl = WRITE_LIMIT,
        wt = WRITE_TIMEOUT_SECS,
    )
}

pub fn haproxy_config(s: &Setup) -> String {
    // HAProxy limits concurrency per server: the writes' limit is split
    // across the nodes (rounded up).
    let per_node = WRITE_LIMIT.div_ceil(s.nodes.len().max(1));
    let mut reads = String::new();
    let mut writes = String::new();
    for (i, n) in s.nodes.iter().enumerate() {
        let _ = writeln!(reads, "  server n{i} {n}");
        let _ = writeln!(writes, "  server n{i} {n} maxconn {per_node}");
    }
    format!(
        r#"# levee-bench: one thread, logs off, same policy as the levee/nginx configs.
global
  nbthread 1
  maxconn 9000
  # Lets a reload hand the listening sockets to the new worker (no refused connections).
  stats socket {dir}/haproxy.sock mode 600 level admin expose-fd listeners
defaults
  mode http
  timeout connect 500ms
  timeout client 60s
  timeout server 5s
  timeout http-keep-alive 60s
  option forwardfor
  http-reuse always
  retries 2
  option redispatch 1
  retry-on conn-failure empty-response response-timeout 500 502 503 504
  default-server check inter 1s fall 3 rise 2 observe layer7 error-limit 10 on-error mark-down
frontend fe
  bind {listen}
  maxconn 9000
  use_backend writes if {{ path_beg {prefix} }}
  default_backend reads
frontend admin
  bind {admin}
  monitor-uri /healthz
backend reads
  option httpchk GET /healthz
  http-request disable-l7-retry if METH_POST
{reads}backend writes
  option httpchk GET /healthz
  http-request disable-l7-retry if METH_POST
  timeout server {wt}s
  timeout queue 50ms
{writes}"#,
        dir = s.dir.display(),
        listen = s.listen,
        admin = s.admin,
        prefix = WRITE_PREFIX,
        wt = WRITE_TIMEOUT_SECS,
    )
}

/// Where the proxies' programs are.
#[derive(Clone, Debug)]
pub struct Programs {
    pub levee: PathBuf,
    pub nginx: Option<PathBuf>,
    pub haproxy: Option<PathBuf>,
}

/// `name` on the PATH or in the sbin directories Debian installs servers to.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    pub kind: Kind,
    pub setup: Setup,
    proc: Proc,
}

impl Running {
    /// Writes the config, starts the proxy (on CPU `pin`) and waits until
    /// both its ports accept connections.
    pub fn start(
        kind: Kind,
        setup: Setup,
        programs: &Programs,
        pin: Option<usize>,
    ) -> anyhow::Result<Running> {
        let dir = &setup.dir;
        let log = dir.join(format!("{}.log", kind.name()));
        let proc = match kind {
            Kind::Levee => {
                let conf = write(dir, "levee.toml", &levee_config(&setup))?;
                Proc::start(&programs.levee, &["run", "--config", &conf], pin, &log)?
            }
            Kind::Nginx => {
                let program = programs
                    .nginx
                    .as_deref()
                    .context("nginx is not installed")?;
                let conf = write(dir, "nginx.conf", &nginx_config(&setup))?;
                let startup_log = dir.join("nginx-startup.log");
                let args = [
                    "-c",
                    &conf,
                    "-e",
                    &startup_log.to_string_lossy(),
                    "-g",
                    "daemon off;",
                ];
                Proc::start(program, &args, pin, &log)?
            }
            Kind::Haproxy => {
                let program = programs
                    .haproxy
                    .as_deref()
                    .context("haproxy is not installed")?;
                let conf = write(dir, "haproxy.cfg", &haproxy_config(&setup))?;
                Proc::start(program, &["-W", "-db", "-f", &conf], pin, &log)?
            }
        };
        let mut running = Running { kind, setup, proc };
        running.wait_ready(&log)?;
        Ok(running)
    }

    fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.proc.exited() {
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{} exited ({status}) at start:\n{tail}", self.kind.name());
            }
            let up = |a: SocketAddr| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
            };
            if up(self.setup.listen) && up(self.setup.admin) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not open its ports within 20 s", self.kind.name());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid whose process tree holds the proxy.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Reloads the config the way the proxy's operators do: SIGHUP for
    /// levee and the nginx master (what `nginx -s reload` sends), SIGUSR2
    /// for the HAProxy master (master-worker mode, `-W`).
    pub fn reload(&self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Levee | Kind::Nginx => self.proc.signal("HUP"),
            Kind::Haproxy => self.proc.signal("USR2"),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(nodes: usize) -> Setup {
        Setup {
            listen: "127.0.0.1:18080".parse().unwrap_or_else(|_| unreachable!()),
            admin: "127.0.0.1:18081".parse().unwrap_or_else(|_| unreachable!()),
            nodes: (0..nodes)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 19000 + i as u16)))
                .collect(),
            dir: PathBuf::from("/tmp/bench"),
        }
    }

    #[test]
    fn levee_config_is_valid_for_levee() {
        let text = levee_config(&setup(6));
        let config = ::levee_config::parse(&text, "bench.toml");
        let config = config.unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.server.workers, 1);
        assert_eq!(config.backends[0].nodes.len(), 6);
        assert!(text.contains("on_statuses = [500, 502, 503, 504]"));
    }

    #[test]
    fn nginx_config_lists_every_node_and_the_write_location() {
        let text = nginx_config(&setup(3));
        assert_eq!(text.matches("max_fails=3").count(), 3);
        assert!(text.contains("server 127.0.0.1:19002 max_fails=3"));
        assert!(text.contains("location /api/ {"));
        assert!(text.contains("limit_conn writes 16;"));
        assert!(text.contains("proxy_read_timeout 2s;"));
        assert!(text.contains("worker_processes 1;"));
        assert!(text.contains("access_log off;"));
        assert!(text.contains("pid /tmp/bench/nginx.pid;"));
    }

    #[test]
    fn haproxy_splits_the_write_limit_across_nodes() {
        let text = haproxy_config(&setup(6));
        assert_eq!(text.matches("maxconn 3\n").count(), 6);
        assert!(text.contains("use_backend writes if { path_beg /api/ }"));
        let one = haproxy_config(&setup(1));
        assert!(one.contains("server n0 127.0.0.1:19000 maxconn 16\n"));
        assert!(one.contains("nbthread 1"));
    }

    #[test]
    fn kinds_parse_by_name() {
        assert_eq!("nginx".parse::<Kind>(), Ok(Kind::Nginx));
        assert!("apache".parse::<Kind>().is_err());
    }
}
