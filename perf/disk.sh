#!/usr/bin/env bash
# Disk-bound hits (issue 13): a cache far larger than the server's memory, served from disk,
# gatecache (each backend) against the anchor (nginx proxy_cache + slice 1m), same origin, same
# machine, one run. Each server runs alone, its one worker pinned to CPU 0, the clients on CPU 1.
#
#   perf/disk.sh                # 24 objects of 256 MiB (6 GiB), 1 GiB memory group, 20 s loads
#   QUICK=1 perf/disk.sh        # smoke run: 6 objects, 256 MiB memory group (same 6:1), 8 s
#   N=12 SIZE_MIB=512 MEM_MIB=2048 DURATION=30 CONNS=16 THROTTLE_MIBS=150 perf/disk.sh
#   BACKENDS=uring THROTTLE="off" perf/disk.sh   # a subset
#   SAMPLE=0 perf/disk.sh       # without the thread-state sampler and perf sched_switch record
#   WORK=/var/tmp/gc-disk perf/disk.sh           # keep (and reuse) the origin files and caches
#   PREREAD=0 perf/disk.sh      # measure right after the restart (see below)
#   ROUNDS=3 perf/disk.sh       # every measurement 3 times; the table gives medians
#   QUIET_MAX=0 perf/disk.sh    # do not wait for a quiet machine before each measurement
#                               # (default: up to 60 s for both CPUs <= QUIET_BUSY=0.3 busy)
#
# Steps: an origin (static nginx, 127.0.0.1) holds N objects of SIZE_MIB; both caches are filled
# with every object (whole GETs through each), then stopped. Then, for each throttle setting and
# each server: the server is started inside a memory group of MEM_MIB (cgroup v1
# memory.limit_in_bytes, or v2 memory.max) and a blkio group; with PREREAD=1 (the default) every
# object is read once whole through it, as a server that has been running would have done (after a
# restart gatecache checks each block's crc on its first read, in the worker: PREREAD=0 measures
# that too); the page cache is dropped (sync; drop_caches), the hot 4 KiB range is read once, it is timed alone for HOT_ALONE s, then for
# DURATION s: CONNS connections of random RANGE_KIB ranges (aligned) over all objects, and one
# connection sending the hot 4 KiB range one request at a time. With THROTTLE=on the group's
# reads from the cache's device are limited to THROTTLE_MIBS (blkio.throttle.read_bps_device or
# io.max rbps). Reported: MiB/s served (MiB = 2^20 bytes), disk bytes read by the group per byte
# served, the hot request's p50/p99, the server's CPU seconds, and (SAMPLE=1) where its threads
# waited. The table gives gatecache / nginx ratios from this run.
#
# Every server binds 127.0.0.1; every loop is bounded; servers, cgroups and the work dir (if
# made here) are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${QUICK:-0}" = 1 ]; then
  N=${N:-6} MEM_MIB=${MEM_MIB:-256} DURATION=${DURATION:-8}
fi
N=${N:-24} SIZE_MIB=${SIZE_MIB:-256} MEM_MIB=${MEM_MIB:-1024} DURATION=${DURATION:-20}
CONNS=${CONNS:-16} RANGE_KIB=${RANGE_KIB:-1024} HOT_ALONE=${HOT_ALONE:-3}
THROTTLE_MIBS=${THROTTLE_MIBS:-150} THROTTLE=${THROTTLE:-off on} BACKENDS=${BACKENDS:-epoll uring}
SAMPLE=${SAMPLE:-1} ROUNDS=${ROUNDS:-1} SEED=${SEED:-13}
CHUNKS=$((SIZE_MIB * 1024 / RANGE_KIB))
[ $((SIZE_MIB * 1024 % RANGE_KIB)) = 0 ] || { echo "SIZE_MIB must be a multiple of RANGE_KIB" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (cgroups, drop_caches)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server on CPU 0, clients on CPU 1)" >&2; exit 2; }

# shellcheck disable=SC2034 # PERF_TMP is perf/lib.sh's (perf_cleanup removes it)
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d /var/tmp/gc-disk.XXXXXX); PERF_TMP=$WORK; fi
mkdir -p "$WORK"
ORIGIN_PORT=19100 ANCHOR_PORT=19101 GC_PORT=19102 GC_ADMIN=19103
# shellcheck source=perf/lib.sh disable=SC1091 # followed with shellcheck -x
. perf/lib.sh
CGROUPS=()
cleanup() {
  perf_cleanup
  local g
  for g in "${CGROUPS[@]}"; do if [ -d "$g" ]; then rmdir "$g" 2>/dev/null || true; fi; done
}
trap cleanup EXIT
perf_install nginx:nginx wrk:wrk taskset:util-linux curl:curl python3:python3
if [ "$SAMPLE" = 1 ] && ! command -v perf >/dev/null; then
  echo "perf not installed: off-CPU stacks skipped (thread states still sampled)"
fi
# GC_BIN: a gatecache binary built elsewhere (e.g. another commit); else this tree's, built here.
if [ -z "${GC_BIN:-}" ]; then cargo build --release -q; fi
BIN=${GC_BIN:-target/release/gatecache}

# ---- cgroups: v1 memory + blkio if the machine has (or can mount) them, else v2 -------------
CG_MODE=
if [ -f /sys/fs/cgroup/memory/memory.limit_in_bytes ] || { mkdir -p /sys/fs/cgroup/memory 2>/dev/null \
  && mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory 2>/dev/null; }; then
  if [ -f /sys/fs/cgroup/blkio/blkio.throttle.read_bps_device ] || { mkdir -p /sys/fs/cgroup/blkio \
    && mount -t cgroup -o blkio cgroup /sys/fs/cgroup/blkio 2>/dev/null; }; then
    CG_MODE=v1
  fi
fi
if [ -z "$CG_MODE" ] && grep -qw memory /sys/fs/cgroup/cgroup.controllers 2>/dev/null \
  && grep -qw io /sys/fs/cgroup/cgroup.controllers; then
  CG_MODE=v2
  echo "+memory +io" > /sys/fs/cgroup/cgroup.subtree_control
fi
[ -n "$CG_MODE" ] || { echo "no memory/blkio cgroup controller available: $(mount | grep cgroup)" >&2; exit 2; }

# The device holding the cache directories (a partition's disk: throttling takes whole disks).
DEV=$(mountpoint -d "$(df --output=target "$WORK" | tail -n1)")
if [ -e "/sys/dev/block/$DEV/partition" ]; then DEV=$(cat "/sys/dev/block/$DEV/../dev"); fi
DEVNAME=$(basename "$(readlink -f "/sys/dev/block/$DEV" 2>/dev/null || echo none)")
if [ ! -e "/sys/dev/block/$DEV" ]; then
  echo "the work dir's file system ($DEV) is not on a block device: throttle and disk bytes unavailable" >&2
  exit 2
fi

# cg_make NAME: fresh groups for one server (CG_MEM, CG_IO), memory limited to MEM_MIB.
cg_make() {
  if [ $CG_MODE = v1 ]; then
    CG_MEM=/sys/fs/cgroup/memory/gc-disk-$$-$1 CG_IO=/sys/fs/cgroup/blkio/gc-disk-$$-$1
    mkdir "$CG_MEM" "$CG_IO"
    CGROUPS+=("$CG_MEM" "$CG_IO")
    echo $((MEM_MIB << 20)) > "$CG_MEM/memory.limit_in_bytes"
  else
    CG_MEM=/sys/fs/cgroup/gc-disk-$$-$1 CG_IO=$CG_MEM
    mkdir "$CG_MEM"
    CGROUPS+=("$CG_MEM")
    echo $((MEM_MIB << 20)) > "$CG_MEM/memory.max"
  fi
}
# cg_throttle BYTES_PER_S (0: none) on the cache's device.
cg_throttle() {
  if [ $CG_MODE = v1 ]; then
    echo "$DEV $1" > "$CG_IO/blkio.throttle.read_bps_device"
  else
    echo "$DEV rbps=$([ "$1" = 0 ] && echo max || echo "$1")" > "$CG_IO/io.max"
  fi
}
# cg_read_bytes: bytes the group has read from the cache's device.
cg_read_bytes() {
  if [ $CG_MODE = v1 ]; then
    awk -v d="$DEV" '$1 == d && $2 == "Read" {print $3; f = 1} END {if (!f) print 0}' "$CG_IO/blkio.throttle.io_service_bytes"
  else
    awk -v d="$DEV" '$1 == d {for (i = 2; i <= NF; i++) if ($i ~ /^rbytes=/) {sub("rbytes=", "", $i); print $i; f = 1}} END {if (!f) print 0}' "$CG_IO/io.stat"
  fi
}
# Summed over the group's processes: read_bytes of /proc/PID/io, CPU ticks (utime + stime).
procs_io() {
  local p s=0
  while read -r p; do s=$((s + $(awk '/^read_bytes/ {print $2}' "/proc/$p/io" 2>/dev/null || echo 0))); done < "$CG_MEM/cgroup.procs"
  echo $s
}
# procs_rq: run-queue wait (schedstat run_delay, seconds) summed over the group's threads: the
# time the server was ready to run but another task had its CPU.
procs_rq() {
  local p t s=0
  while read -r p; do
    for t in /proc/"$p"/task/*; do s=$((s + $(awk '{print $2}' "$t/schedstat" 2>/dev/null || echo 0))); done
  done < "$CG_MEM/cgroup.procs"
  awk -v s="$s" 'BEGIN {print s / 1e9}'
}
procs_cpu() {
  local p s=0
  while read -r p; do s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done < "$CG_MEM/cgroup.procs"
  echo $s
}
mem_peak() {
  if [ $CG_MODE = v1 ]; then cat "$CG_MEM/memory.max_usage_in_bytes"; else cat "$CG_MEM/memory.peak" 2>/dev/null || cat "$CG_MEM/memory.current"; fi
}
HZ=$(getconf CLK_TCK)
# cpu_busy [cpuN]: busy ticks (all but idle and iowait, steal included) of one CPU or all.
cpu_busy() { awk -v c="${1:-cpu}" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
# wait_quiet: this machine may be shared; wait (up to QUIET_MAX s) until both CPUs are at most
# QUIET_BUSY busy over a second, and say so if they never were.
QUIET_MAX=${QUIET_MAX:-60} QUIET_BUSY=${QUIET_BUSY:-0.3}
wait_quiet() {
  local i b0 b1 share=1
  [ "$QUIET_MAX" -gt 0 ] || return 0
  for i in $(seq 1 "$QUIET_MAX"); do
    b0=$(cpu_busy); sleep 1; b1=$(cpu_busy)
    share=$(awk -v a="$b0" -v b="$b1" -v hz="$HZ" -v n="$(nproc)" 'BEGIN {printf "%.2f", (b - a) / hz / n}')
    awk -v s="$share" -v q="$QUIET_BUSY" 'BEGIN {exit !(s <= q)}' && return 0
  done
  echo "  (machine still busy after ${QUIET_MAX} s: ${share} of all CPUs; measuring anyway)"
}

# ---- origin, the two caches' configurations ---------------------------------------------------
mkdir -p "$WORK/www" "$WORK/anchor-cache" "$WORK/gc-cache"
for i in $(seq 0 $((N - 1))); do
  f=$WORK/www/obj-$i.bin
  [ "$(stat -c %s "$f" 2>/dev/null || echo 0)" = $((SIZE_MIB << 20)) ] || head -c $((SIZE_MIB << 20)) /dev/urandom > "$f"
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
# Room for every object in both caches: the anchor's 4g is compare.sh's, too small here.
CACHE_MIB=$((N * SIZE_MIB * 11 / 10 + 1024))
perf_anchor_conf "$WORK/anchor.conf" "127.0.0.1:$ANCHOR_PORT" "127.0.0.1:$ORIGIN_PORT" "$WORK"
sed -i "s/max_size=4g/max_size=${CACHE_MIB}m/" "$WORK/anchor.conf"
grep -q "max_size=${CACHE_MIB}m" "$WORK/anchor.conf" || { echo "anchor config: max_size not set" >&2; exit 1; }
perf_gc_conf "$WORK/gc.toml" $GC_PORT $GC_ADMIN "$WORK/gc-cache" "${CACHE_MIB}MiB" "http://127.0.0.1:$ORIGIN_PORT"

nginx -c "$WORK/origin.conf" & PIDS+=($!)

# start_server NAME [cgroup]: NAME is nginx or gc-epoll / gc-uring; sets SRV_PID. In a cgroup
# the process joins the groups before exec, so every thread and child is in them.
start_server() {
  local cmd
  case $1 in
    nginx) cmd=(nginx -c "$WORK/anchor.conf") ;;
    gc-*) cmd=(env RUST_LOG=info "$BIN" serve --config "$WORK/gc.toml" --io-backend "${1#gc-}") ;;
  esac
  if [ "${2:-}" = cgroup ]; then
    local files="$CG_MEM/cgroup.procs"
    [ "$CG_IO" = "$CG_MEM" ] || files="$files $CG_IO/cgroup.procs"
    # shellcheck disable=SC2016 # $$ and $@ are the inner shell's
    sh -c 'for f in '"$files"'; do echo $$ > "$f"; done; exec taskset -c 0 "$@"' sh "${cmd[@]}" \
      >>"$WORK/$1.log" 2>&1 &
  else
    taskset -c 0 "${cmd[@]}" >>"$WORK/$1.log" 2>&1 &
  fi
  SRV_PID=$!
  PIDS+=("$SRV_PID")
  local port=$ANCHOR_PORT i
  [ "$1" = nginx ] || port=$GC_PORT
  for i in $(seq 1 600); do # up to 60 s (gatecache recovers its store first)
    if [ "$1" = nginx ]; then
      curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/obj-0.bin" -r 0-0 2>/dev/null | grep -q 206 && break
    else
      curl -sf -o /dev/null "http://127.0.0.1:$GC_ADMIN/readyz" 2>/dev/null && break
    fi
    kill -0 "$SRV_PID" 2>/dev/null || { echo "$1 exited:"; tail -n 20 "$WORK/$1.log"; exit 1; }
    sleep 0.1
  done
  # (nginx's cache loader walks the cache directory 60 s after the start, after the load here.)
}
stop_server() { # by PID; bounded: TERM, up to 30 s, then KILL
  local i
  kill "$SRV_PID" 2>/dev/null || true
  for i in $(seq 1 300); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
}
origin_reqs() { wc -l < "$WORK/origin.log" 2>/dev/null || echo 0; }

echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)$(git status --porcelain src | grep -q . && echo ' (src modified)')  binary: $BIN  kernel: $(uname -r)"
echo "cpu: $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM"
echo "objects: $N x $SIZE_MIB MiB; load: $CONNS connections of random ${RANGE_KIB} KiB ranges, ${DURATION} s; hot: 4 KiB, one at a time; pre-read after each start: $([ "${PREREAD:-1}" = 1 ] && echo yes || echo no); rounds: $ROUNDS"
echo "cache device: $DEVNAME ($DEV), read_ahead_kb $(cat "/sys/dev/block/$DEV/queue/read_ahead_kb" 2>/dev/null || echo ?), scheduler $(cat "/sys/dev/block/$DEV/queue/scheduler" 2>/dev/null || echo ?)"
if [ $CG_MODE = v1 ]; then
  echo "groups: cgroup v1, memory.limit_in_bytes = $MEM_MIB MiB, blkio.throttle.read_bps_device $DEV = $THROTTLE_MIBS MiB/s when throttled; disk bytes from blkio.throttle.io_service_bytes"
else
  echo "groups: cgroup v2, memory.max = $MEM_MIB MiB, io.max $DEV rbps = $THROTTLE_MIBS MiB/s when throttled; disk bytes from io.stat rbytes"
fi

# ---- fill both caches with every object, whole -------------------------------------------------
fill() { # LABEL PORT: every object whole through the server on PORT
  local t0 t1 i got total=0
  t0=$(date +%s.%N)
  for i in $(seq 0 $((N - 1))); do
    got=$(taskset -c 1 curl -sf -o /dev/null -w '%{size_download}' --max-time 600 "http://127.0.0.1:$2/obj-$i.bin")
    [ "$got" = $((SIZE_MIB << 20)) ] || { echo "$1 obj-$i: got $got bytes" >&2; exit 1; }
    total=$((total + got))
  done
  t1=$(date +%s.%N)
  awk -v n="$1" -v b="$total" -v a="$t0" -v c="$t1" 'BEGIN {printf "%s: %.1f GiB in %.1f s\n", n, b / 2^30, c - a}'
}
FIRST_GC=gc-${BACKENDS%% *}
start_server nginx; fill "fill nginx" $ANCHOR_PORT; stop_server
start_server "$FIRST_GC"; fill "fill gatecache" $GC_PORT; stop_server
sync
echo "on disk: anchor $(du -sh "$WORK/anchor-cache" | cut -f1) in $(find "$WORK/anchor-cache" -type f | wc -l) files, gatecache $(du -sh "$WORK/gc-cache" | cut -f1)"

# ---- the load generators ------------------------------------------------------------------------
cat > "$WORK/load.lua" <<EOF
math.randomseed($SEED)
local n, chunks, len = $N, $CHUNKS, $((RANGE_KIB * 1024))
request = function()
  local o = math.random(0, n - 1)
  local c = math.random(0, chunks - 1)
  return wrk.format("GET", "/obj-" .. o .. ".bin", { Range = "bytes=" .. (c * len) .. "-" .. (c * len + len - 1) })
end
EOF
cat > "$WORK/hot.lua" <<'EOF'
wrk.path = "/obj-0.bin"
wrk.headers["Range"] = "bytes=0-4095"
EOF
cat > "$WORK/done.lua" <<'EOF'
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format("RESULT %d %d %d %d %d %.0f %.0f %.0f\n", s.duration, s.requests, s.bytes,
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
EOF
cat "$WORK/done.lua" >> "$WORK/load.lua"
cat "$WORK/done.lua" >> "$WORK/hot.lua"
# wrk_run PORT CONNS SECONDS SCRIPT -> "duration_us requests bytes status_errors io_errors p50_us p99_us max_us"
wrk_run() {
  taskset -c 1 wrk -t1 -c"$2" -d"$3s" --timeout 10s -s "$4" "http://127.0.0.1:$1/" | awk '$1 == "RESULT" {$1 = ""; print substr($0, 2)}'
}

# ---- measure ----------------------------------------------------------------------------------
RESULTS=$WORK/results.txt
: > "$RESULTS"
measure() { # ROUND THROTTLE(off|on) NAME
  local round=$1 thr=$2 name=$3 port=$GC_PORT tag=$1-$2-$3
  [ "$name" = nginx ] && port=$ANCHOR_PORT
  cg_make "$tag"
  wait_quiet
  # Dropped before the start too: a page already cached (charged to another group) that the
  # server maps would stay resident outside its limit, and drop_caches never drops mapped pages.
  sync
  echo 3 > /proc/sys/vm/drop_caches
  start_server "$name" cgroup
  if [[ $name == gc-* ]]; then grep -o 'cache: .*' "$WORK/$name.log" | tail -n1 | sed 's/^/  /'; fi
  if [ "${PREREAD:-1}" = 1 ]; then fill "  pre-read through $name in its group" "$port"; fi
  echo 3 > /proc/sys/vm/drop_caches
  taskset -c 1 curl -sf -o /dev/null -r 0-4095 "http://127.0.0.1:$port/obj-0.bin"
  local alone
  alone=$(wrk_run "$port" 1 "$HOT_ALONE" "$WORK/hot.lua")
  local bps=0
  [ "$thr" = on ] && bps=$((THROTTLE_MIBS << 20))
  cg_throttle "$bps"
  local blk0 pio0 cpu0 org0 blk1 pio1 cpu1 org1 load hot c00 c01 rq0 rq1
  blk0=$(cg_read_bytes) pio0=$(procs_io) cpu0=$(procs_cpu) org0=$(origin_reqs) c00=$(cpu_busy cpu0) rq0=$(procs_rq)
  local sampler=
  if [ "$SAMPLE" = 1 ]; then
    taskset -c 1 python3 perf/disk_sample.py states "$CG_MEM/cgroup.procs" "$DURATION" "$WORK/tids-$tag" > "$WORK/states-$tag.txt" &
    sampler=$!
    if command -v perf >/dev/null; then
      taskset -c 1 perf record -q -a -g -e sched:sched_switch -o "$WORK/perf-$tag.data" -- sleep "$DURATION" >/dev/null 2>&1 &
      sampler="$sampler $!"
    fi
  fi
  wrk_run "$port" "$CONNS" "$DURATION" "$WORK/load.lua" > "$WORK/load-$tag.txt" &
  local lpid=$!
  hot=$(wrk_run "$port" 1 "$DURATION" "$WORK/hot.lua")
  wait "$lpid"
  load=$(cat "$WORK/load-$tag.txt")
  blk1=$(cg_read_bytes) pio1=$(procs_io) cpu1=$(procs_cpu) org1=$(origin_reqs) c01=$(cpu_busy cpu0) rq1=$(procs_rq)
  local p
  for p in $sampler; do wait "$p" || true; done
  cg_throttle 0
  local rss
  if [ "$name" = nginx ]; then
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$(pgrep -P "$SRV_PID" -f 'worker process' | head -n1)/status")
  else
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$SRV_PID/status")
  fi
  local peak
  peak=$(mem_peak)
  stop_server
  if [ -z "$load" ] || [ -z "$hot" ] || [ -z "$alone" ]; then echo "$tag: a load generator failed" >&2; exit 1; fi
  # Fields: 1 round, 2 throttle, 3 server; 4-11 load, 12-19 hot, 20-27 hot alone, each: duration
  # us, requests, bytes, status errors, socket errors, p50 us, p99 us, max us; 28 disk bytes
  # (group), 29 read_bytes (/proc/PID/io), 30 CPU s, 31 origin requests, 32 RSS KiB, 33 group
  # memory peak bytes, 34 CPU 0 busy s outside the server's utime + stime (other processes on
  # the server's CPU, and softirq time), 35 run-queue wait s of the server's threads.
  echo "$round $thr $name $load $hot $alone $((blk1 - blk0)) $((pio1 - pio0)) $(awk -v a="$cpu0" -v b="$cpu1" -v hz="$HZ" 'BEGIN {print (b - a) / hz}') $((org1 - org0)) $rss $peak $(awk -v a="$c00" -v b="$c01" -v s0="$cpu0" -v s1="$cpu1" -v hz="$HZ" 'BEGIN {v = ((b - a) - (s1 - s0)) / hz; print (v > 0 ? v : 0)}') $(awk -v a="$rq0" -v b="$rq1" 'BEGIN {print b - a}')" >> "$RESULTS"
  awk -v t="$THROTTLE_MIBS" '{
    served = $6 + $14; mibs = $6 / ($4 / 1e6) / 2^20
    printf "%-2s %-3s %-9s %8.1f MiB/s%s  disk/served %5.2f (proc io %5.2f)  hot p50 %7.2f p99 %7.2f ms (alone %.2f/%.2f)  load p99 %6.1f ms  errors %d+%d/%d+%d  cpu %.1f s  origin reqs %d  rss %d MiB  group peak %d MiB  CPU 0 not server %.1f s  run-queue wait %.2f s\n",
      $1, $2, $3, mibs, ($2 == "on" ? sprintf(" (%.2f of throttle)", mibs / t) : ""),
      $28 / served, $29 / served, $17 / 1000, $18 / 1000, $25 / 1000, $26 / 1000, $10 / 1000,
      $7, $8, $15, $16, $30, $31, $32 / 1024, $33 / 2^20, $34, $35}' <<<"$(tail -n1 "$RESULTS")"
  if [ "$SAMPLE" = 1 ]; then
    grep -v '^worker ' "$WORK/states-$tag.txt" || true
    awk '$1 == "worker" {print "'"$round $thr $name"'", $2, $3, $4}' "$WORK/states-$tag.txt" >> "$WORK/worker.txt"
    if [ -f "$WORK/perf-$tag.data" ]; then
      perf script -i "$WORK/perf-$tag.data" 2>/dev/null | python3 perf/disk_sample.py offcpu "$WORK/tids-$tag" "$DURATION" || true
      rm -f "$WORK/perf-$tag.data"
    fi
  fi
  local g
  for g in "$CG_MEM" "$CG_IO"; do if [ -d "$g" ]; then rmdir "$g" 2>/dev/null || true; fi; done
}

SERVERS="nginx"
for b in $BACKENDS; do SERVERS="$SERVERS gc-$b"; done
for round in $(seq 1 "$ROUNDS"); do
  for thr in $THROTTLE; do
    for name in $SERVERS; do measure "$round" "$thr" "$name"; done
  done
done

# ---- the table: medians over rounds, gatecache / nginx ------------------------------------------
echo
printf '%-8s %-34s %10s' throttle figure nginx
for b in $BACKENDS; do printf ' %10s %7s' "gc-$b" ratio; done
echo
: > "$WORK/worker.txt.tmp"; [ -f "$WORK/worker.txt" ] && cp "$WORK/worker.txt" "$WORK/worker.txt.tmp"
# shellcheck disable=SC2016 # the rows' expressions are awk's
for thr in $THROTTLE; do
  # fig EXPR-in-awk: per server, the median over rounds
  fig() {
    local name=$1 expr=$2
    awk -v n="$name" -v t="$thr" -v lim="$THROTTLE_MIBS" '$2 == t && $3 == n {print '"$expr"'}' "$RESULTS" \
      | sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
  }
  row() { # LABEL EXPR: nginx, then each backend and its ratio to nginx
    local a g
    a=$(fig nginx "$2")
    printf '%-8s %-34s %10.2f' "$thr" "$1" "$a"
    for b in $BACKENDS; do
      g=$(fig "gc-$b" "$2")
      awk -v a="$a" -v g="$g" 'BEGIN {printf " %10.2f %6.2fx", g, (a > 0 ? g / a : 0)}'
    done
    echo
  }
  row "MiB/s" '$6 / ($4 / 1e6) / 2^20'
  [ "$thr" = on ] && row "MiB/s / throttle ($THROTTLE_MIBS MiB/s)" '$6 / ($4 / 1e6) / 2^20 / lim'
  row "disk bytes per byte served" '$28 / ($6 + $14)'
  row "hot 4 KiB p50 ms (lower better)" '$17 / 1000'
  row "hot 4 KiB p99 ms (lower better)" '$18 / 1000'
  row "hot 4 KiB alone p50 ms" '$25 / 1000'
  row "hot 4 KiB alone p99 ms" '$26 / 1000'
  row "range p99 ms (lower better)" '$10 / 1000'
  row "server CPU s" '$30'
  row "MiB per CPU-second" '($30 > 0 ? $6 / 2^20 / $30 : 0)'
  row "disk MiB/s read by the group" '$28 / ($4 / 1e6) / 2^20'
  row "CPU 0 s not the server's (noise)" '$34'
  row "server run-queue wait s (noise)" '$35'
  wmed() { # SERVER COLUMN: median over rounds of the sampled worker state share
    awk -v t="$thr" -v n="$1" -v c="$2" '$2 == t && $3 == n {print $c}' "$WORK/worker.txt.tmp" \
      | sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'
  }
  if [ -s "$WORK/worker.txt.tmp" ]; then
    for st in R S D; do
      case $st in R) col=4 ;; S) col=5 ;; D) col=6 ;; esac
      printf '%-8s %-34s %10.3f' "$thr" "worker thread in state $st (share)" "$(wmed nginx "$col")"
      for b in $BACKENDS; do printf ' %10.3f %7s' "$(wmed "gc-$b" "$col")" ""; done
      echo
    done
  fi
done

# ---- issue 13's targets, from the table's medians ----------------------------------------------
echo
target() { # LABEL FIGURE OP BOUND
  awk -v l="$1" -v f="$2" -v op="$3" -v b="$4" 'BEGIN {
    ok = (op == ">=") ? (f >= b) : (f <= b)
    printf "  %-52s %8.2f  %s %-5s %s\n", l, f, op, b, (ok ? "met" : "NOT met")}'
}
# shellcheck disable=SC2016 # fig's expressions are awk's
for b in $BACKENDS; do
  echo "issue 13 targets, gc-$b:"
  if [[ " $THROTTLE " == *" off "* ]]; then
    thr=off
    target "MiB/s / nginx's, unthrottled" "$(awk -v g="$(fig "gc-$b" '$6 / $4')" -v a="$(fig nginx '$6 / $4')" 'BEGIN {print (a > 0 ? g / a : 0)}')" ">=" 1.5
    target "disk bytes read per byte served, unthrottled" "$(fig "gc-$b" '$28 / ($6 + $14)')" "<=" 1.1
    target "hot 4 KiB p99 ms under the load, unthrottled" "$(fig "gc-$b" '$18 / 1000')" "<=" 5
  fi
  if [[ " $THROTTLE " == *" on "* ]]; then
    thr=on
    target "MiB/s / the throttle ($THROTTLE_MIBS MiB/s)" "$(fig "gc-$b" '$6 / ($4 / 1e6) / 2^20 / lim')" ">=" 0.9
    target "disk bytes read per byte served, throttled" "$(fig "gc-$b" '$28 / ($6 + $14)')" "<=" 1.1
  fi
done
