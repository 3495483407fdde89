# Sourced by the load scripts: nginx and HAProxy as levee is measured, one
# worker each, keep-alive to the node, X-Forwarded-For added (as levee does).
# nginx_config FILE PORT NODE_PORT WORKDIR and haproxy_config FILE PORT
# NODE_PORT write them.
nginx_config() {
  cat > "$1" <<CONF
worker_processes 1;
pid $4/nginx.pid;
error_log $4/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$3; keepalive 1024; }
  server {
    listen 127.0.0.1:$2;
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

haproxy_config() {
  cat > "$1" <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$2
  default_backend app
backend app
  server n1 127.0.0.1:$3
CONF
}
