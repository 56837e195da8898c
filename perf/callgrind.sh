#!/usr/bin/env bash
# Instructions per hit request under callgrind (valgrind), for one or more gatecache binaries:
# counts that do not move with the load of a shared machine, unlike compare.sh's CPU-seconds.
#
#   perf/callgrind.sh old=/tmp/target-old/release/gatecache new=target/release/gatecache
#   N3=5000 N1=200 OUT=/var/tmp/cg perf/callgrind.sh new=target/release/gatecache
#   perf/callgrind_diff.py OUT/old-w3.out OUT/new-w3.out 5000   # which functions grew
#
# For each binary, three runs on a fresh cache (epoll backend: valgrind does not know io_uring),
# with compare.sh's config (perf_gc_conf, one worker, 4 GiB, every path fresh for a day):
#   base  start, warm (16m.bin and 256m.bin fetched whole, one 4 KiB range hit), no requests
#   w3    the same, then N3 W3-style hits on one keep-alive connection (GET /16m.bin,
#         Range: 4 KiB at a fixed sequence of 4 KiB-aligned offsets)
#   w1    the same, then N1 W1-style hits on one keep-alive connection (GET /256m.bin,
#         Range: 1 MiB at a fixed sequence of 1 MiB-aligned offsets)
# then SIGTERM (a clean exit writes the counters). Each run dumps its counters when the warm-up
# is done (callgrind_control --dump: OUT/LABEL-MODE.out.1), so OUT/LABEL-MODE.out holds the
# request phase alone. Per request: (Ir of the run - Ir of base) / N, for the whole run and for
# the request phase alone (base's: a 1 s idle wait and the exit). The whole-run figure carries
# the warm-up's own spread (about 0.5 M Ir: the fill reads what the socket has), so it needs a
# large N; the request-phase figure does not. Servers bind 127.0.0.1 only and are stopped by
# PID; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
N3=${N3:-5000}
N1=${N1:-200}
OUT=${OUT:-/var/tmp/gc-callgrind}
ORIGIN_PORT=${ORIGIN_PORT:-19020} GC_PORT=${GC_PORT:-19022} GC_ADMIN=${GC_ADMIN:-19023}
# PERF_TMP: removed on exit by perf_cleanup (perf/lib.sh).
WORK=$(mktemp -d /var/tmp/gc-cg.XXXXXX)
# shellcheck disable=SC2034
PERF_TMP=$WORK
# shellcheck source=perf/lib.sh disable=SC1091
. perf/lib.sh
cleanup() {
  if [ -n "${VG_PID:-}" ]; then kill "$VG_PID" 2>/dev/null || true; fi
  perf_cleanup
}
trap cleanup EXIT
perf_install nginx:nginx valgrind:valgrind python3:python3 curl:curl
[ $# -gt 0 ] || { echo "usage: $0 label=path/to/gatecache ..." >&2; exit 2; }
mkdir -p "$OUT" "$WORK/www"
head -c $((16 << 20)) /dev/urandom > "$WORK/www/16m.bin"
head -c $((256 << 20)) /dev/urandom > "$WORK/www/256m.bin"
cat > "$WORK/origin.conf" <<EOF
user root; worker_processes 1; daemon off; pid $WORK/origin.pid; error_log $WORK/origin.err;
events {}
http { access_log off; sendfile on; server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; } }
EOF
nginx -c "$WORK/origin.conf" & PIDS+=($!)

# client.py PORT PATH N STEP SIZE COUNT: N keep-alive GETs of PATH with Range at offset
# (i * STEP mod COUNT) * SIZE, SIZE bytes each; fails unless every answer is a 206 of SIZE bytes.
cat > "$WORK/client.py" <<'EOF'
import socket, sys
port, path, n, step, size, count = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
s = socket.create_connection(("127.0.0.1", int(port)), timeout=120)
buf = b""
for i in range(n):
    o = (i * step % count) * size
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nRange: bytes={o}-{o + size - 1}\r\n\r\n".encode())
    while b"\r\n\r\n" not in buf:
        c = s.recv(65536)
        if not c: sys.exit(f"closed after {i} responses")
        buf += c
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    if " 206 " not in lines[0] + " ": sys.exit(f"response {i}: {lines[0]}")
    length = next(int(l.split(":", 1)[1]) for l in lines if l.lower().startswith("content-length:"))
    if length != size: sys.exit(f"response {i}: {length} bytes")
    while len(buf) < length:
        c = s.recv(1 << 20)
        if not c: sys.exit(f"closed in body {i}")
        buf += c
    buf = buf[length:]
s.close()
EOF

# run LABEL BIN MODE -> callgrind files $OUT/LABEL-MODE.out.1 (start-up and warm-up) and
# $OUT/LABEL-MODE.out (the rest: requests, drain, exit)
run() {
  local label=$1 bin=$2 mode=$3 f=$OUT/$1-$3.out i
  rm -rf "$WORK/gc-cache" "$f" "$f".*; mkdir -p "$WORK/gc-cache"
  perf_gc_conf "$WORK/gc.toml" "$GC_PORT" "$GC_ADMIN" "$WORK/gc-cache" 4GiB "http://127.0.0.1:$ORIGIN_PORT"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$f" --vgdb=yes \
    "$bin" serve --config "$WORK/gc.toml" --io-backend epoll 2> "$WORK/vg-$label-$mode.err" &
  VG_PID=$!
  for i in $(seq 1 300); do
    curl -sf -m 5 "http://127.0.0.1:$GC_ADMIN/healthz" >/dev/null && break
    kill -0 "$VG_PID" 2>/dev/null || { cat "$WORK/vg-$label-$mode.err" >&2; exit 1; }
    sleep 0.5
    [ "$i" -lt 300 ] || { echo "$label: not up after 150 s" >&2; exit 1; }
  done
  for o in 16m 256m; do curl -sf -m 300 -o /dev/null "http://127.0.0.1:$GC_PORT/$o.bin"; done
  # The same warm-up hits in every run, then the end of the warm-up part.
  curl -sf -m 60 -o /dev/null -r 0-4095 "http://127.0.0.1:$GC_PORT/16m.bin"
  timeout 120 callgrind_control --dump=warm "$VG_PID" >/dev/null 2>&1
  case $mode in
    base) sleep 1 ;;
    w3) timeout 1200 python3 "$WORK/client.py" "$GC_PORT" /16m.bin "$N3" 2731 4096 4096 ;;
    w1) timeout 1200 python3 "$WORK/client.py" "$GC_PORT" /256m.bin "$N1" 37 1048576 256 ;;
  esac
  kill -TERM "$VG_PID"
  for i in $(seq 1 240); do kill -0 "$VG_PID" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$VG_PID" 2>/dev/null; then echo "$label $mode: no exit after SIGTERM" >&2; exit 1; fi
  wait "$VG_PID" || { echo "$label $mode: exit status $?" >&2; exit 1; }
  VG_PID=
}
# ir FILE...: total Ir (the "summary:" line) over the files.
ir() { awk '/^summary:/ {s += $2} END {printf "%d", s}' "$@"; }

printf '%-8s %-5s %16s %16s %14s %14s\n' binary mode "Ir whole run" "Ir requests" "Ir/req whole" "Ir/req phase"
for spec in "$@"; do
  label=${spec%%=*} bin=${spec#*=}
  for mode in base w3 w1; do run "$label" "$bin" "$mode"; done
  b_all=$(ir "$OUT/$label-base.out" "$OUT/$label-base.out.1") b_req=$(ir "$OUT/$label-base.out")
  for mode in base w3 w1; do
    case $mode in base) n=0 ;; w3) n=$N3 ;; w1) n=$N1 ;; esac
    all=$(ir "$OUT/$label-$mode.out" "$OUT/$label-$mode.out.1") req=$(ir "$OUT/$label-$mode.out")
    awk -v l="$label" -v m="$mode" -v a="$all" -v r="$req" -v ba="$b_all" -v br="$b_req" -v n="$n" 'BEGIN {
      if (n > 0) printf "%-8s %-5s %16d %16d %14.0f %14.0f\n", l, m, a, r, (a - ba) / n, (r - br) / n
      else printf "%-8s %-5s %16d %16d %14s %14s\n", l, m, a, r, "-", "-" }'
  done
done
