#!/usr/bin/env bash
# Side-by-side hit benchmark: gatecache vs the anchor (nginx proxy_cache + slice 1m), same
# origin, same machine, one run. Each target is pinned to CPU 0 with one worker, the load
# generator (wrk) to CPU 1. Prints one table with both figures and the ratio.
#
#   perf/compare.sh            # W1 W2 W3 (10 s each, 3 alternating rounds: medians) and W4
#   DURATION=5 perf/compare.sh
#   GC_BACKEND=epoll perf/compare.sh   # gatecache on its epoll backend (default: auto)
#   WORKLOADS="W2 W3" perf/compare.sh  # a subset of the hit workloads
#   VERBOSE=1 perf/compare.sh          # also print every round
#   FLOOR=0 perf/compare.sh            # skip the static-file floor rows of W1/W2
#
# W1 and W2 also run against a plain static nginx (sendfile, open_file_cache, no proxy, no
# cache logic) on CPU 0: about the least CPU per byte an HTTP server spends on this kernel, so
# the "static" rows show how far above the kernel's own cost each cache is.
#
# Every server binds 127.0.0.1 and is stopped by PID on exit; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
# This machine is shared and noisy: each workload runs ROUNDS times, nginx and gatecache
# alternating, and the table shows medians.
ROUNDS=${ROUNDS:-3}
# A work dir of our own is removed on exit (it holds GiBs); one given in WORK is kept.
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d /var/tmp/gc-perf.XXXXXX); PERF_TMP=$WORK; fi
ORIGIN_PORT=19000 ANCHOR_PORT=19001 GC_PORT=19002 GC_ADMIN=19003 FLOOR_PORT=19004
# shellcheck source=perf/lib.sh
. perf/lib.sh
trap perf_cleanup EXIT
perf_install nginx:nginx wrk:wrk taskset:util-linux
cargo build --release -q
# GC_BIN: another gatecache binary to measure (e.g. an older commit built elsewhere).
BIN=${GC_BIN:-target/release/gatecache}

mkdir -p "$WORK/www" "$WORK/anchor-cache" "$WORK/gc-cache"
for spec in 1m:1 16m:16 256m:256; do
  name=${spec%%:*} mib=${spec##*:}
  [ -f "$WORK/www/$name.bin" ] || head -c $((mib << 20)) /dev/urandom > "$WORK/www/$name.bin"
done

cat > "$WORK/origin.conf" <<EOF
user root; worker_processes 1; daemon off; pid $WORK/origin.pid; error_log $WORK/origin.err;
events {}
http {
  log_format o '\$uri \$status \$body_bytes_sent';
  access_log $WORK/origin.log o; sendfile on;
  server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; }
}
EOF
cat > "$WORK/floor.conf" <<EOF
user root; worker_processes 1; daemon off; pid $WORK/floor.pid; error_log $WORK/floor.err;
events { worker_connections 4096; }
http {
  access_log off; sendfile on; open_file_cache max=64; keepalive_requests 1000000;
  server { listen 127.0.0.1:$FLOOR_PORT; root $WORK/www; }
}
EOF
perf_anchor_conf "$WORK/anchor.conf" "127.0.0.1:$ANCHOR_PORT" "127.0.0.1:$ORIGIN_PORT" "$WORK"
perf_gc_conf "$WORK/gc.toml" $GC_PORT $GC_ADMIN "$WORK/gc-cache" 4GiB "http://127.0.0.1:$ORIGIN_PORT"

nginx -c "$WORK/origin.conf" & PIDS+=($!)
taskset -c 0 nginx -c "$WORK/anchor.conf" & ANCHOR_PID=$!; PIDS+=($ANCHOR_PID)
taskset -c 0 nginx -c "$WORK/floor.conf" & FLOOR_PID=$!; PIDS+=($FLOOR_PID)
RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$WORK/gc.toml" --io-backend "${GC_BACKEND:-auto}" & GC_PID=$!; PIDS+=($GC_PID)
for i in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$GC_ADMIN/healthz" >/dev/null && curl -sf -o /dev/null "http://127.0.0.1:$ANCHOR_PORT/1m.bin" && break
  sleep 0.2
done

# Warm both caches with every object, whole.
for port in $ANCHOR_PORT $GC_PORT; do
  for f in 1m 16m 256m; do curl -sf -o /dev/null "http://127.0.0.1:$port/$f.bin"; done
done

# The server process whose CPU we count: nginx's single worker, gatecache itself.
worker_of() { pgrep -P "$1" | head -n1 || echo "$1"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

cat > "$WORK/w1.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  local i = math.random(0, 255)
  return wrk.format("GET", "/256m.bin", { Range = "bytes=" .. (i * 1048576) .. "-" .. (i * 1048576 + 1048575) })
end
EOF
cat > "$WORK/w3.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  local o = math.random(0, 4095) * 4096
  return wrk.format("GET", "/16m.bin", { Range = "bytes=" .. o .. "-" .. (o + 4095) })
end
EOF

# run_wrk PORT PID PATH SCRIPT CONNS -> "req/s MB/s cpu_s p99_ms"
run_wrk() {
  local port=$1 pid=$2 path=$3 script=$4 conns=$5 before after out
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --latency ${script:+-s "$script"} "http://127.0.0.1:$port$path")
  after=$(cpu_ticks "$pid")
  local rps mbs p99 cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  mbs=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024}; print v}' <<<"$out")
  p99=$(awk '/ 99%/ {v=$2; if (v ~ /us/) {sub("us","",v); v/=1000} else if (v ~ /ms/) {sub("ms","",v)} else if (v ~ /s/) {sub("s","",v); v*=1000}; print v}' <<<"$out")
  cpu=$(awk -v a="$before" -v b="$after" -v hz="$HZ" 'BEGIN {print (b - a) / hz}')
  echo "$rps $mbs $cpu $p99"
}

row() { # name unit anchor-figure gc-figure
  awk -v n="$1" -v u="$2" -v a="$3" -v g="$4" 'BEGIN {printf "%-4s %-22s %12.1f %12.1f %7.2fx\n", n, u, a, g, (a > 0 ? g / a : 0)}'
}

echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)  kernel: $(uname -r)"
echo "cpu: $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo)"
printf '%-4s %-22s %12s %12s %8s\n' id figure nginx gatecache ratio
AW=$(worker_of "$ANCHOR_PID") FW=$(worker_of "$FLOOR_PID")
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
for w in ${WORKLOADS:-W1 W2 W3}; do
  case $w in
    W1) path=/256m.bin script=$WORK/w1.lua conns=8 ;;
    W2) path=/1m.bin script= conns=8 ;;
    W3) path=/16m.bin script=$WORK/w3.lua conns=32 ;;
  esac
  : > "$WORK/a.txt"; : > "$WORK/g.txt"; : > "$WORK/f.txt"
  floor=; [ $w != W3 ] && [ "${FLOOR:-1}" = 1 ] && floor=1
  for _ in $(seq 1 "$ROUNDS"); do
    run_wrk $ANCHOR_PORT "$AW" $path "$script" $conns >> "$WORK/a.txt"
    run_wrk $GC_PORT "$GC_PID" $path "$script" $conns >> "$WORK/g.txt"
    if [ -n "$floor" ]; then run_wrk $FLOOR_PORT "$FW" $path "$script" $conns >> "$WORK/f.txt"; fi
  done
  [ -n "${VERBOSE:-}" ] && { echo "$w anchor rounds:"; cat "$WORK/a.txt"; echo "$w gatecache rounds:"; cat "$WORK/g.txt"; echo "$w static rounds:"; cat "$WORK/f.txt"; } >&2
  # col FILE N: median of column N; per_cpu FILE N: median of column N x DURATION / CPU seconds.
  col() { awk -v c="$2" '{print $c}' "$1" | median; }
  per_cpu() { awk -v c="$2" -v d="$DURATION" '{print $c * d / $3}' "$1" | median; }
  if [ $w = W3 ]; then
    row $w "req/s" "$(col "$WORK/a.txt" 1)" "$(col "$WORK/g.txt" 1)"
    row $w "req per CPU-second" "$(per_cpu "$WORK/a.txt" 1)" "$(per_cpu "$WORK/g.txt" 1)"
    printf '%-4s %-22s %12.2f %12.2f   (lower is better)\n' $w "p99 latency ms" \
      "$(col "$WORK/a.txt" 4)" "$(col "$WORK/g.txt" 4)"
  else
    row $w "MB/s" "$(col "$WORK/a.txt" 2)" "$(col "$WORK/g.txt" 2)"
    row $w "MB per CPU-second" "$(per_cpu "$WORK/a.txt" 2)" "$(per_cpu "$WORK/g.txt" 2)"
    if [ -n "$floor" ]; then
      # The static server in the first column: these ratios are "of the floor".
      row $w "static MB/s | gc" "$(col "$WORK/f.txt" 2)" "$(col "$WORK/g.txt" 2)"
      row $w "static MB/CPU-s | gc" "$(per_cpu "$WORK/f.txt" 2)" "$(per_cpu "$WORK/g.txt" 2)"
      row $w "static MB/CPU-s | nginx" "$(per_cpu "$WORK/f.txt" 2)" "$(per_cpu "$WORK/a.txt" 2)"
    fi
  fi
done
# Cold workloads: fresh names (hard links) so each cache sees a cold object.
origin_sum() { awk -v u="$1" '$1 == u {n++; b += $3} END {printf "%d %d", n, b}' "$WORK/origin.log"; }
c1() { # port name -> "requests bytes seconds"
  ln -f "$WORK/www/16m.bin" "$WORK/www/$2"
  local t0 t1
  t0=$(date +%s.%N)
  for _ in $(seq 1 50); do taskset -c 1 curl -s -o /dev/null "http://127.0.0.1:$1/$2" & done
  wait
  t1=$(date +%s.%N)
  sleep 0.5
  echo "$(origin_sum "/$2") $(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
}
c3() { # port name -> "requests bytes"
  ln -f "$WORK/www/256m.bin" "$WORK/www/$2"
  taskset -c 1 curl -s -o /dev/null -r 100-199 "http://127.0.0.1:$1/$2"
  sleep 0.5
  origin_sum "/$2"
}
stamp=$(date +%s)
read -r a_n a_b a_t <<<"$(c1 $ANCHOR_PORT c1-a-$stamp.bin)"
read -r g_n g_b g_t <<<"$(c1 $GC_PORT c1-g-$stamp.bin)"
printf '%-4s %-22s %12s %12s   (object: 16777216 bytes)\n' C1 "origin requests" "$a_n" "$g_n"
printf '%-4s %-22s %12s %12s\n' C1 "origin bytes" "$a_b" "$g_b"
printf '%-4s %-22s %12.2f %12.2f\n' C1 "wall seconds, 50 clients" "$a_t" "$g_t"
read -r a_n a_b <<<"$(c3 $ANCHOR_PORT c3-a-$stamp.bin)"
read -r g_n g_b <<<"$(c3 $GC_PORT c3-g-$stamp.bin)"
printf '%-4s %-22s %12s %12s   (asked: 100 bytes of 256 MiB)\n' C3 "origin bytes" "$a_b" "$g_b"
w4() { taskset -c 1 curl -s -o /dev/null -w '%{speed_download}' "http://127.0.0.1:$1/256m.bin" | awk '{print $1 / 1048576}'; }
row W4 "MB/s one stream" "$(w4 $ANCHOR_PORT)" "$(w4 $GC_PORT)"
