# Sourced by the load scripts: nginx and HAProxy as levee is measured, one
# worker each, keep-alive to the nodes, X-Forwarded-For added (as levee does).
# nginx_config FILE PORT CONNS NODE... and haproxy_config FILE PORT CONNS
# NODE... write them: CONNS bounds the connections (nginx keeps a quarter of
# it idle to the nodes), each NODE is a host:port. nginx's pid file and
# error log go beside FILE.
nginx_config() {
  local file=$1 port=$2 conns=$3
  shift 3
  cat > "$file" <<CONF
worker_processes 1;
pid ${file%.*}.pid;
error_log $(dirname "$file")/nginx-error.log;
events { worker_connections $conns; }
http {
  access_log off;
  upstream app {
$(printf '    server %s;\n' "$@")
    keepalive $((conns / 4));
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
}

# Idle node connections are kept a minute, not HAProxy's default 5 s: with
# many nodes, each sees a request only now and then.
haproxy_config() {
  local file=$1 port=$2 conns=$3 i=0
  shift 3
  {
    cat <<CONF
global
  nbthread 1
  maxconn $conns
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$port
  default_backend app
backend app
  default-server pool-purge-delay 60s
CONF
    for node in "$@"; do
      printf '  server n%d %s\n' $i "$node"
      i=$((i + 1))
    done
  } > "$file"
}
