#!/usr/bin/env bash
# How kvd scales with cores on this machine: the same kvbench runs against
# an in-memory kvd on one core (CPU 1) with the client on CPU 0 and then on
# CPUs 0-1, and against kvd on both cores with the client on both.
#
#   bench/cores.sh                  # ROUNDS=2, 5 s per run
#
# Prints one line per run: ops/s, p99 and the server's CPU seconds per
# million operations. Every process it starts it stops by PID. Needs a
# release build (cargo build --release).
set -uo pipefail
cd "$(dirname "$0")/.."
KVD=target/release/kvd
KVBENCH=target/release/kvbench
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
for bin in "$KVD" "$KVBENCH"; do
  [ -x "$bin" ] || { echo "missing $bin: run cargo build --release" >&2; exit 2; }
done
PID=
WORK=$(mktemp -d /tmp/kvd-cores.XXXXXX)
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

run() { # label server-cpus client-cpus
  local label=$1 srv=$2 cli=$3
  : >"$WORK/kvd.log"
  taskset -c "$srv" "$KVD" --cores "$srv" --persistence none --listen 127.0.0.1:7491 \
    --resp-listen 127.0.0.1:7492 --http-listen 127.0.0.1:7493 >"$WORK/kvd.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do grep -q "kvd ready" "$WORK/kvd.log" && break; sleep 0.1; done
  for w in "set 1" "get 1" "set 16" "get 16"; do
    read -r op depth <<<"$w"
    "$KVBENCH" --target 127.0.0.1:7491 --cores "$cli" -c 50 -P "$depth" -w "$op" --keys 100000 --preload \
      -d "$DURATION" --warmup 1 --server-pid "$PID" --json 2>/dev/null | python3 -c "
import json, sys
r = json.load(sys.stdin)
o = r['ops_by_type']['$op']
print(f\"$label  $op P$depth  {r['ops_per_sec']:>9.0f} ops/s  p99 {o['p99_ms']:6.2f} ms  server {r['run']['server_cpu_s_per_mop']:5.2f} CPU s per M ops\")"
  done
  kill "$PID"
  wait "$PID" 2>/dev/null
  PID=
}

for _ in $(seq 1 "$ROUNDS"); do
  run "kvd on CPU 1,   client on CPU 0  " 1 0
  run "kvd on CPU 1,   client on CPUs 0-1" 1 0,1
  run "kvd on CPUs 0-1, client on CPUs 0-1" 0,1 0,1
done
