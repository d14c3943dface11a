#!/usr/bin/env bash
# Memory per key, kvd against Redis, side by side: each server alone on the
# same pinned CPU, loaded with the same `redis-cli --pipe` stream (COUNT
# SETs of VALUE-byte values, keys `key:N`), then its resident memory read
# from /proc and divided by the keys it holds. Also prints the time each
# load took (mass insertion).
#
#   bench/memory-per-key.sh                      # 1 M keys x 256 B, then 10 M x 16 B
#   SIZES="100000:256" bench/memory-per-key.sh   # COUNT:VALUE pairs
#
# kvd runs with --persistence none (and, in a second row, --fsync never);
# Redis with no persistence (and appendonly everysec). Needs a release
# build and redis-server/redis-cli. Every process it starts it stops by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
SIZES=${SIZES:-"1000000:256 10000000:16"}
KVD=${KVD:-target/release/kvd}
PORT=${PORT:-7420}
WORK=$(mktemp -d /tmp/kvd-mem-XXXXXX)
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

for tool in redis-server redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install redis-server redis-tools)" >&2; exit 2; }
done
[ -x "$KVD" ] || { echo "needs $KVD (cargo build --release)" >&2; exit 2; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# The stream: COUNT SETs of VALUE random hex characters (incompressible
# enough that kvd's compression never pays off).
stream() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
count, size, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(out, "wb", buffering=1 << 20) as f:
    for i in range(count):
        key = b"key:%d" % i
        value = os.urandom((size + 1) // 2).hex().encode()[:size]
        f.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
PY
}

wait_log() {
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "no '$2' in $1" >&2
  exit 1
}

# run LABEL COMMAND...: starts the server, loads the stream, prints a row.
run() {
  local label=$1 count=$2 file=$3
  shift 3
  taskset -c "$SERVER_CPU" "$@" >"$WORK/server.log" 2>&1 &
  PID=$!
  case $label in
    kvd*) wait_log "$WORK/server.log" "kvd ready" ;;
    *) wait_log "$WORK/server.log" "Ready to accept connections" ;;
  esac
  local idle start end keys rss
  idle=$(rss_kib "$PID")
  start=$(date +%s.%N)
  taskset -c "$CLIENT_CPU" redis-cli -p "$PORT" --pipe <"$file" >"$WORK/pipe.out"
  end=$(date +%s.%N)
  keys=$(redis-cli -p "$PORT" DBSIZE)
  sleep 1
  rss=$(rss_kib "$PID")
  printf '| %s | %s | %.1f | %d | %d | %.0f |\n' "$label" "$keys" "$(echo "$end - $start" | bc)" \
    $((idle / 1024)) $((rss / 1024)) "$(echo "($rss - $idle) * 1024 / $keys" | bc)"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
  rm -rf "$WORK/kvd" "$WORK/redis"
  mkdir -p "$WORK/redis"
}

mkdir -p "$WORK/redis"
for size in $SIZES; do
  count=${size%%:*}
  value=${size##*:}
  echo
  echo "$count keys x $value B values (redis-cli --pipe), server on CPU $SERVER_CPU"
  echo
  echo "| server | keys | load s | idle RSS MiB | loaded RSS MiB | bytes per key |"
  echo "|---|---|---|---|---|---|"
  stream "$count" "$value" "$WORK/stream"
  kvd_common=(--data-dir "$WORK/kvd" --cores "$SERVER_CPU" --resp-listen "127.0.0.1:$PORT"
    --listen 127.0.0.1:0 --http-listen 127.0.0.1:0)
  run "kvd --persistence none" "$count" "$WORK/stream" "$KVD" "${kvd_common[@]}" --persistence none
  run "Redis, no persistence" "$count" "$WORK/stream" redis-server --port "$PORT" --save '' --appendonly no \
    --dir "$WORK/redis"
  run "kvd --fsync never" "$count" "$WORK/stream" "$KVD" "${kvd_common[@]}" --fsync never
  run "Redis, appendfsync everysec" "$count" "$WORK/stream" redis-server --port "$PORT" --save '' \
    --appendonly yes --appendfsync everysec --dir "$WORK/redis"
  rm -f "$WORK/stream"
done
