#!/usr/bin/env bash
# C4: a cold download over a WAN-like uplink. The origin (nginx) runs in a network namespace this
# script creates, behind a veth pair limited with tbf to RATE each way, and waits DELAY seconds
# before every response (nginx's echo module: this kernel has no netem). A cold object is
# downloaded straight from the origin, through gatecache, and through the anchor (nginx
# proxy_cache + slice 1m); the figure is throughput relative to the direct download.
#
#   perf/wan.sh                          # 200mbit, 20 ms, 256 MiB
#   RATE=100mbit SIZE_MIB=64 perf/wan.sh
#   WINDOW=16MiB perf/wan.sh             # gatecache's upstream window (default 64MiB)
#
# Needs root (namespaces, tc). Everything it starts is stopped by PID, the namespace and the veth
# are deleted on exit, and every download is bounded by a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-200mbit}
DELAY=${DELAY:-0.02}
SIZE_MIB=${SIZE_MIB:-256}
# A work dir of our own is removed on exit (it holds GiBs); one given in WORK is kept.
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d /var/tmp/gc-wan.XXXXXX); PERF_TMP=$WORK; fi
NS=gcwan$$
VETH=gcw$$
HOST_IP=10.77.0.1 ORIGIN_IP=10.77.0.2
GC_PORT=19102 GC_ADMIN=19103 ANCHOR_PORT=19104
# shellcheck source=perf/lib.sh
. perf/lib.sh
cleanup() {
  perf_cleanup
  ip link del "$VETH" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
perf_install nginx:nginx /usr/lib/nginx/modules/ngx_http_echo_module.so:libnginx-mod-http-echo tc:iproute2
cargo build --release -q
BIN=$PWD/target/release/gatecache

mkdir -p "$WORK/www" "$WORK/gc-cache" "$WORK/anchor-cache"
[ -f "$WORK/www/obj.bin" ] || head -c $((SIZE_MIB << 20)) /dev/urandom > "$WORK/www/obj.bin"
stamp=$(date +%s)
for who in direct gc anchor; do ln -f "$WORK/www/obj.bin" "$WORK/www/$who-$stamp.bin"; done

ip netns add "$NS"
ip link add "$VETH" type veth peer name "${VETH}o"
ip link set "${VETH}o" netns "$NS"
ip addr add "$HOST_IP/24" dev "$VETH"
ip link set "$VETH" up
ip netns exec "$NS" ip addr add "$ORIGIN_IP/24" dev "${VETH}o"
ip netns exec "$NS" ip link set "${VETH}o" up
ip netns exec "$NS" ip link set lo up
tc qdisc add dev "$VETH" root tbf rate "$RATE" burst 256kb latency 100ms
ip netns exec "$NS" tc qdisc add dev "${VETH}o" root tbf rate "$RATE" burst 256kb latency 100ms

cat > "$WORK/origin.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
user root; worker_processes 1; daemon off; pid $WORK/origin.pid; error_log $WORK/origin.err;
events {}
http {
  log_format o '\$uri \$status \$body_bytes_sent "\$http_range"';
  access_log $WORK/origin.log o;
  sendfile on;
  server {
    listen $ORIGIN_IP:80;
    location / { echo_sleep $DELAY; echo_exec @file; }
    location @file { root $WORK/www; }
  }
}
EOF
perf_anchor_conf "$WORK/anchor.conf" "127.0.0.1:$ANCHOR_PORT" "$ORIGIN_IP:80" "$WORK"
perf_gc_conf "$WORK/gc.toml" $GC_PORT $GC_ADMIN "$WORK/gc-cache" "$((SIZE_MIB * 2 + 64))MiB" \
  "http://$ORIGIN_IP:80" "$(printf '[upstream]\nwindow = "%s"' "${WINDOW:-64MiB}")"

ip netns exec "$NS" nginx -c "$WORK/origin.conf" & PIDS+=($!)
nginx -c "$WORK/anchor.conf" & PIDS+=($!)
RUST_LOG=${GC_LOG:-warn} "$BIN" serve --config "$WORK/gc.toml" 2> "$WORK/gc.log" & PIDS+=($!)
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$GC_ADMIN/healthz" >/dev/null && break
  sleep 0.2
done

limit=$((SIZE_MIB * 8 * 3 / 100 + 60)) # generous: three times the time at 100 Mbit/s
fetch() { curl -s -o "$WORK/out" --max-time "$limit" -w '%{time_starttransfer} %{time_total}' "$1"; }
check() { cmp -s "$WORK/out" "$WORK/www/obj.bin" && echo ok || echo BAD; }

read -r d_ttfb d_total <<<"$(fetch "http://$ORIGIN_IP/direct-$stamp.bin")"; d_ok=$(check)
read -r g_ttfb g_total <<<"$(fetch "http://127.0.0.1:$GC_PORT/gc-$stamp.bin")"; g_ok=$(check)
read -r a_ttfb a_total <<<"$(fetch "http://127.0.0.1:$ANCHOR_PORT/anchor-$stamp.bin")"; a_ok=$(check)
reqs() { awk -v u="/$1-$stamp.bin" '$1 == u {n++} END {print n + 0}' "$WORK/origin.log"; }

echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)  uplink: $RATE, +${DELAY}s per response, ${SIZE_MIB} MiB cold"
printf '%-26s %10s %10s %10s %14s %6s\n' path ttfb_s total_s MB/s vs_direct bytes
for r in "direct $d_ttfb $d_total $d_ok direct" "gatecache $g_ttfb $g_total $g_ok gc" "nginx-slice $a_ttfb $a_total $a_ok anchor"; do
  read -r name ttfb total ok key <<<"$r"
  awk -v n="$name ($(reqs "$key") origin req)" -v t="$ttfb" -v s="$total" -v d="$d_total" -v m="$SIZE_MIB" -v ok="$ok" \
    'BEGIN {printf "%-26s %10.3f %10.2f %10.1f %13.2fx %6s\n", n, t, s, m * 1.048576 / s, d / s, ok}'
done
