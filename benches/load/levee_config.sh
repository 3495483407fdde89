# Sourced by the load scripts: the levee config they all measure with.
# levee_config FILE LEVEE_PORT ADMIN_PORT NODE_PORT [TLS_PORT] writes it: one
# worker, one node, bulkheads wide enough never to refuse the benchmark's
# load, and a keep-alive pool as large as its connections (spelled out, so
# that builds from before 1024 became the default keep as many). With TLS_PORT, a TLS listener too, serving tls.pem/tls.key from
# FILE's directory (see tls_pair).
# With LEVEE_ACCESS_LOG set, it also writes the access log to that path.
levee_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:$2"
workers = 1
TOML
  if [ -n "${5:-}" ]; then
    cat >> "$1" <<TOML
[server.tls]
listen = "127.0.0.1:$5"
[[server.tls.certificate]]
cert = "tls.pem"
key = "tls.key"
TOML
  fi
  cat >> "$1" <<TOML
[admin]
listen = "127.0.0.1:$3"
[[backend]]
name = "app"
nodes = ["127.0.0.1:$4"]
max_in_flight = 4096
max_queue = 1024
pool_max_idle_per_node = 1024
[[route]]
path_prefix = "/"
backend = "app"
TOML
  if [ -n "${LEVEE_ACCESS_LOG:-}" ]; then
    printf '[log]\naccess = "%s"\n' "$LEVEE_ACCESS_LOG" >> "$1"
  fi
}

# tls_pair DIR: a throwaway self-signed P-256 certificate for 127.0.0.1 in
# DIR/tls.pem and DIR/tls.key (made per run; never committed).
tls_pair() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1" \
    -keyout "$1/tls.key" -out "$1/tls.pem" >/dev/null 2>&1
}
