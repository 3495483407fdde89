# Sourced by the load scripts: the levee config they all measure with.
# levee_config FILE LEVEE_PORT ADMIN_PORT NODE_PORT writes it: one worker,
# one node, bulkheads wide enough never to refuse the benchmark's load.
levee_config() {
  cat > "$1" <<TOML
[server]
listen = "127.0.0.1:$2"
workers = 1
[admin]
listen = "127.0.0.1:$3"
[[backend]]
name = "app"
nodes = ["127.0.0.1:$4"]
max_in_flight = 4096
max_queue = 1024
[[route]]
path_prefix = "/"
backend = "app"
TOML
}
