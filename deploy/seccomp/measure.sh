#!/usr/bin/env bash
# Lists the system calls gatecache makes (strace -f) while it serves a cold object, hits,
# ranges, HEAD, a 304, a revalidation, a pass-through, https and the admin endpoints, reopens
# its log, and stops on SIGTERM; on both I/O backends. gatecache.json's allow list is this list
# plus what a container runtime needs to start a process (see the README there).
#
#   deploy/seccomp/measure.sh > /tmp/syscalls.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v strace >/dev/null || { echo "needs strace (apt-get install strace)" >&2; exit 1; }
cargo build --release -q
W=$(mktemp -d /var/tmp/gc-seccomp.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/www"
head -c 3000000 /dev/urandom > "$W/www/a.bin"
cat > "$W/origin.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $W/o.pid; error_log $W/o.err;
events {}
http { access_log off; server { listen 127.0.0.1:19400; root $W/www; location / { expires 1s; } } }
CONF
nginx -c "$W/origin.conf" & PIDS+=($!)
for backend in uring epoll; do
  cat > "$W/gc.toml" <<CONF
listen = "127.0.0.1:19401"
admin_listen = "127.0.0.1:19402"
workers = 2
io_backend = "$backend"
access_log = "$W/access.log"
[[storage]]
path = "$W/cache-$backend"
size = "256MiB"
[[route]]
prefix = "/"
origin = "http://127.0.0.1:19400"
CONF
  strace -f -qq -o "$W/trace-$backend" target/release/gatecache serve --config "$W/gc.toml" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:19402/healthz >/dev/null && break; sleep 0.1; done
  u=http://127.0.0.1:19401
  curl -s -o /dev/null $u/a.bin; curl -s -o /dev/null $u/a.bin; curl -s -o /dev/null -r 5-50 $u/a.bin
  curl -s -o /dev/null -I $u/a.bin; curl -s -o /dev/null -H 'If-None-Match: "x"' $u/a.bin
  sleep 2.2; curl -s -o /dev/null $u/a.bin                       # stale: revalidated
  curl -s -o /dev/null -H 'Authorization: x' $u/a.bin           # passed through
  curl -s -o /dev/null -X POST -d x=1 $u/a.bin
  curl -s -o /dev/null $u/missing.bin
  curl -s -o /dev/null http://127.0.0.1:19402/summary; curl -s -o /dev/null http://127.0.0.1:19402/metrics
  pid=$(pgrep -f "gatecache serve --config $W/gc.toml" | grep -v "^$!$" | tail -1)
  kill -HUP "$pid"; sleep 1.2; kill -TERM "$pid"; wait "$!" || true
done
cat "$W"/trace-* | sed -n 's/^[0-9]* *\([a-z0-9_]*\)(.*/\1/p' | sort -u
