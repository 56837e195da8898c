# Shared by the perf scripts (sourced): process cleanup, package installs, the anchor's config.

PIDS=()
# PERF_TMP: a work dir the script made for itself, removed on exit.
perf_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${PERF_TMP:-}" ]; then rm -rf "$PERF_TMP"; fi
}

# perf_install CMD:PACKAGE ... installs the Debian packages whose command (or file, if CMD is a
# path) is missing, without letting their services start (nginx would take port 80).
perf_install() {
  local need=() spec cmd pkg
  for spec in "$@"; do
    cmd=${spec%%:*} pkg=${spec##*:}
    if [[ $cmd == /* ]]; then
      [ -e "$cmd" ] || need+=("$pkg")
    else
      command -v "$cmd" >/dev/null || need+=("$pkg")
    fi
  done
  if [ ${#need[@]} -gt 0 ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    rm -f /usr/sbin/policy-rc.d
  fi
}

# perf_anchor_conf FILE LISTEN UPSTREAM WORKDIR writes the anchor's config: nginx proxy_cache +
# slice 1m, one worker, as popular download caches configure it.
perf_anchor_conf() {
  cat > "$1" <<CONF
user root; worker_processes 1; daemon off; pid $4/anchor.pid; error_log $4/anchor.err;
events { worker_connections 4096; }
http {
  access_log off; sendfile on;
  proxy_cache_path $4/anchor-cache levels=1:2 keys_zone=c:64m max_size=4g inactive=1d;
  server {
    listen $2;
    location / {
      slice 1m;
      proxy_cache c;
      proxy_cache_key \$uri\$slice_range;
      proxy_set_header Range \$slice_range;
      proxy_cache_valid 200 206 1d;
      proxy_cache_lock on;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://$3;
    }
  }
}
CONF
}

# perf_gc_conf FILE LISTEN_PORT ADMIN_PORT STORAGE_DIR SIZE ORIGIN [EXTRA_LINES] writes a
# one-worker gatecache config routing every path to ORIGIN (http://host:port).
perf_gc_conf() {
  cat > "$1" <<CONF
listen = "127.0.0.1:$2"
admin_listen = "127.0.0.1:$3"
workers = 1
[[storage]]
path = "$4"
size = "$5"
[[route]]
prefix = "/"
origin = "$6"
# The anchor's proxy_cache_valid 200 206 1d: fresh for a day whatever the origin says.
[[rule]]
path = "*"
max_age = "1d"
${7:-}
CONF
}
