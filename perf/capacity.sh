#!/usr/bin/env bash
# Capacity planning: what one gatecache worker (one core) serves from cache, by number of
# concurrent clients and by range size. Writes perf/capacity.dat and perf/capacity.png (gnuplot)
# and prints the table that perf/CAPACITY.md quotes.
#
#   perf/capacity.sh                 # 5 s per point
#   DURATION=3 perf/capacity.sh
#
# gatecache (workers = 1) is pinned to CPU 0 and wrk to CPU 1; both bind 127.0.0.1 and are
# stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
# A work dir of our own is removed on exit (it holds GiBs); one given in WORK is kept.
if [ -z "${WORK:-}" ]; then WORK=$(mktemp -d /var/tmp/gc-cap.XXXXXX); PERF_TMP=$WORK; fi
ORIGIN_PORT=19200 GC_PORT=19201 GC_ADMIN=19202
# shellcheck source=perf/lib.sh
. perf/lib.sh
trap perf_cleanup EXIT
perf_install nginx:nginx wrk:wrk gnuplot:gnuplot-nox
cargo build --release -q
BIN=$PWD/target/release/gatecache

mkdir -p "$WORK/www" "$WORK/gc-cache"
[ -f "$WORK/www/obj.bin" ] || head -c $((256 << 20)) /dev/urandom > "$WORK/www/obj.bin"
cat > "$WORK/origin.conf" <<EOF
user root; worker_processes 1; daemon off; pid $WORK/origin.pid; error_log $WORK/origin.err;
events {}
http { access_log off; sendfile on; server { listen 127.0.0.1:$ORIGIN_PORT; root $WORK/www; } }
EOF
perf_gc_conf "$WORK/gc.toml" $GC_PORT $GC_ADMIN "$WORK/gc-cache" 1GiB "http://127.0.0.1:$ORIGIN_PORT"
nginx -c "$WORK/origin.conf" & PIDS+=($!)
RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$WORK/gc.toml" & GC_PID=$!; PIDS+=($GC_PID)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$GC_ADMIN/healthz" >/dev/null && break; sleep 0.2; done
curl -sf -o /dev/null "http://127.0.0.1:$GC_PORT/obj.bin" # warm: the whole object cached

# A wrk script asking random aligned ranges of SIZE bytes of the 256 MiB object.
cat > "$WORK/ranges.lua" <<'EOF'
local size = tonumber(os.getenv("RANGE_SIZE"))
local n = math.floor(268435456 / size)
request = function()
  local o = math.random(0, n - 1) * size
  return wrk.format("GET", "/obj.bin", { Range = "bytes=" .. o .. "-" .. (o + size - 1) })
end
EOF
mbps() { # clients range_size -> MB/s
  RANGE_SIZE=$2 taskset -c 1 wrk -t1 -c"$1" -d"${DURATION}s" -s "$WORK/ranges.lua" "http://127.0.0.1:$GC_PORT/" |
    awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /MB/) {sub("MB","",v)} else if (v ~ /KB/) {sub("KB","",v); v/=1024}; print v}'
}

DAT=perf/capacity.dat
{
  echo "# clients  MB/s(1MiB ranges)  MB/s(64KiB ranges)  MB/s(4KiB ranges)  -- one worker, one core"
  for c in 1 2 4 8 16 32 64; do
    echo "$c $(mbps $c 1048576) $(mbps $c 65536) $(mbps $c 4096)"
  done
} > "$DAT"
cat "$DAT"

gnuplot <<EOF
set terminal png size 900,520
set output "perf/capacity.png"
set title "gatecache, one worker on one core: cache hits (random aligned ranges of a 256 MiB object)"
set xlabel "concurrent clients"
set ylabel "MB/s served"
set logscale x 2
set key top left
set grid
plot "$DAT" using 1:2 with linespoints title "1 MiB ranges (Windows DO pieces)", \
     "$DAT" using 1:3 with linespoints title "64 KiB ranges", \
     "$DAT" using 1:4 with linespoints title "4 KiB ranges"
EOF
best=$(awk '!/^#/ {if ($2 > m) m = $2} END {print m}' "$DAT")
echo "peak 1 MiB-range throughput on one core: $best MB/s"
echo "devices pulling a 1 GiB update in one hour, one core: $(awk -v m="$best" 'BEGIN {printf "%d", m * 3600 / 1024}')"
echo "plot: perf/capacity.png"
