#!/usr/bin/env bash
# Side by side: kvd and Redis on the same pinned server CPU, driven by the
# same kvbench settings from another CPU; one table with ratios to kvd.
#
#   bench/compare.sh                   # all cases, 10 s each
#   DURATION=3 CASES=memory bench/compare.sh
#
# Installs nothing. Needs: a release build (cargo build --release), and
# redis-server (Debian: apt-get install redis-server). Every process it
# starts it stops by PID. Results go to stdout and $OUT (default
# bench/out/<date>/).
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CASES=${CASES:-"memory durable"}
KEYS=${KEYS:-100000}
VALUE=${VALUE:-256}
OUT=${OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
KVD=target/release/kvd
KVBENCH=target/release/kvbench

for bin in "$KVD" "$KVBENCH"; do
  [ -x "$bin" ] || { echo "missing $bin: run cargo build --release" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "missing redis-server: apt-get install redis-server" >&2; exit 2; }
command -v redis-cli >/dev/null || { echo "missing redis-cli: apt-get install redis-tools" >&2; exit 2; }
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# wait_port HOST PORT: bounded wait for a listener.
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2; return 1
}

start_redis() { # port, extra args...
  local port=$1; shift
  rm -f "$WORK"/*.aof "$WORK"/appendonlydir -r 2>/dev/null || true
  taskset -c "$SERVER_CPU" redis-server --port "$port" --bind 127.0.0.1 --save '' --dir "$WORK" "$@" \
    >"$OUT/redis-$port.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID"); wait_port 127.0.0.1 "$port"
  # Listening is not serving: wait (bounded) until it answers PING.
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ] && return 0
    sleep 0.05
  done
  echo "redis on $port never answered PING" >&2; return 1
}

start_kvd() { # port, extra args...
  local port=$1; shift
  rm -rf "$WORK/kvd-$port"
  taskset -c "$SERVER_CPU" "$KVD" --cores "$SERVER_CPU" --listen "127.0.0.1:$port" --data-dir "$WORK/kvd-$port" "$@" \
    >"$OUT/kvd-$port.log" 2>&1 &
  SERVER_PID=$!; PIDS+=("$SERVER_PID"); wait_port 127.0.0.1 "$port"
}

stop_server() {
  kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
}

# bench LABEL PORT PROTOCOL kvbench-args...: one JSON report in $OUT/LABEL.json
bench() {
  local label=$1 port=$2 proto=$3; shift 3
  "$KVBENCH" --target "127.0.0.1:$port" --protocol "$proto" --cores "$CLIENT_CPU" -d "$DURATION" --warmup "$WARMUP" \
    --keys "$KEYS" --value-bytes "$VALUE" --label "$label" --json --server-pid "$SERVER_PID" \
    --hgrm-dir "$OUT/hgrm" "$@" >"$OUT/$label.json" 2>"$OUT/$label.err" || true
}

WORKLOADS=("set -c 50 -P 1" "get -c 50 -P 1 --preload" "set -c 50 -P 16" "get -c 50 -P 16 --preload"
           "set -c 1 -P 1" "mix:0.9 -c 50 -P 1 --dist zipf:0.99 --preload")
name() { echo "$1" | tr -d ':' | tr ' .' '_-' | sed 's/--preload//; s/--dist_zipf0-99/zipf/; s/_-/_/g; s/__*/_/g; s/_$//'; }

for case in $CASES; do
  case $case in
    memory) kvd_args=(--fsync never); redis_args=(--appendonly no); peer=redis-nopersist ;;
    durable) kvd_args=(--fsync always); redis_args=(--appendonly yes --appendfsync always); peer=redis-aof-always ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  for w in "${WORKLOADS[@]}"; do
    # shellcheck disable=SC2086
    set -- $w
    wl=$1; shift
    n=$(name "$wl $*")
    start_kvd 7402 "${kvd_args[@]}"; bench "$case~kvd~$n" 7402 native -w "$wl" "$@"; stop_server
    start_redis 7401 "${redis_args[@]}"; bench "$case~$peer~$n" 7401 resp -w "$wl" "$@"; stop_server
  done
done

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = {}
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    case, server, wl = f[:-5].split("~")
    try:
        r = json.load(open(os.path.join(out, f)))
    except ValueError:
        err = open(os.path.join(out, f[:-5] + ".err")).read().strip().splitlines()
        rows.setdefault((case, wl), {})[server] = None
        print(f"FAILED {f}: {err[-1] if err else 'no output'}", file=sys.stderr)
        continue
    ops = r["ops_by_type"]
    used = [o for o in ops.values() if o["count"] > 0]
    p50 = max(o["p50_ms"] for o in used) if used else 0.0
    p99 = max(o["p99_ms"] for o in used) if used else 0.0
    rows.setdefault((case, wl), {})[server] = (r["ops_per_sec"], p50, p99, r["run"]["server_cpu_s_per_mop"] or 0.0, r["errors"])
print(f"{'case':8} {'workload':22} {'server':17} {'ops/s':>9} {'p50_ms':>7} {'p99_ms':>7} {'cpu_us/op':>9} {'errors':>6} {'kvd/peer':>8}")
for (case, wl), servers in sorted(rows.items()):
    kvd = servers.get("kvd")
    for server, row in sorted(servers.items(), key=lambda s: s[0] != "kvd"):
        if row is None:
            print(f"{case:8} {wl:22} {server:17} {'FAILED':>9}")
            continue
        ops, p50, p99, cpu, err = row
        ratio = "" if server == "kvd" or not kvd or ops == 0 else f"{kvd[0] / ops:.2f}x"
        print(f"{case:8} {wl:22} {server:17} {ops:9.0f} {p50:7.3f} {p99:7.3f} {cpu:9.1f} {err:6} {ratio:>8}")
print("p50/p99: the slower operation's; cpu_us/op: server CPU microseconds per operation; kvd/peer: throughput ratio")
PY
echo "reports: $OUT"
