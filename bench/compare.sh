#!/usr/bin/env bash
# Side by side on one machine: kvd against Redis, memcached and etcd, every
# server alone on the same pinned server CPU in turn, each driven by the
# same kvbench settings from another CPU; one table with ratios to kvd,
# the machine's floor printed beside it, and percentile plots.
#
#   bench/compare.sh                            # all cases, 10 s per run
#   DURATION=3 WARMUP=1 CASES=memory bench/compare.sh
#   KVD_PROTOCOL=resp bench/compare.sh          # drive kvd over RESP, like Redis
#   KVD_BASELINE=/tmp/old/kvd PEERS=0 bench/compare.sh   # this kvd against another build only
#
# Cases:
#   memory   kvd --persistence none   vs Redis (no persistence), memcached (-t 1)
#   durable  kvd --fsync always       vs Redis (appendonly yes, appendfsync always), etcd (1 member)
# (3 kvd nodes vs 3 etcd members: bench/compare-cluster.sh.)
#
# Installs nothing: it checks for the peers and prints the apt-get line for
# what is missing. Needs a release build (cargo build --release). Every
# process it starts it stops by PID (trap on exit). Results go to stdout
# and $OUT (default bench/out/<date>/): per run a JSON report, .hgrm files,
# and SVG plots comparing the servers per workload.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CASES=${CASES:-"memory durable"}
KEYS=${KEYS:-100000}
VALUE=${VALUE:-256}
# Offered load of the open-loop workload (requests per second, all connections).
RATE=${RATE:-10000}
# How kvbench talks to kvd: native (its binary protocol) or resp.
KVD_PROTOCOL=${KVD_PROTOCOL:-native}
case $KVD_PROTOCOL in
  native) KVD_PORT=7402 ;;
  resp) KVD_PORT=7406 ;;
  *) echo "KVD_PROTOCOL must be native or resp" >&2; exit 2 ;;
esac
OUT=${OUT:-bench/out/$(date -u +%Y%m%dT%H%M%SZ)}
KVD=target/release/kvd
KVBENCH=target/release/kvbench
# Another kvd binary to run beside this one as the server "kvd-baseline".
KVD_BASELINE=${KVD_BASELINE:-}
# 0: no Redis, memcached or etcd, only kvd (and the baseline).
PEERS=${PEERS:-1}

for bin in "$KVD" "$KVBENCH"; do
  [ -x "$bin" ] || { echo "missing $bin: run cargo build --release" >&2; exit 2; }
done
missing=()
need() { # command package
  command -v "$1" >/dev/null || missing+=("$2")
}
need taskset util-linux
need python3 python3
need redis-server redis-server
need redis-cli redis-tools
need redis-benchmark redis-tools
need memcached memcached
need etcd etcd-server
need etcdctl etcd-client
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing tools; install them with:" >&2
  echo "  apt-get install -y $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 2
fi

mkdir -p "$OUT/hgrm" "$OUT/plots"
WORK=$(mktemp -d -p "${TMPDIR:-/tmp}" kvd-compare.XXXXXX)
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

# started NAME: records the last background process as the server.
started() {
  SERVER_PID=$!; PIDS+=("$SERVER_PID"); SERVER_NAME=$1
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "${WORK:?}/data"
}

start_kvd() { # extra args...
  taskset -c "$SERVER_CPU" "${KVD_BIN:-$KVD}" --cores "$SERVER_CPU" --listen 127.0.0.1:7402 --resp-listen 127.0.0.1:7406 \
    --http-listen 127.0.0.1:0 --data-dir "$WORK/data" "$@" >"$OUT/kvd.log" 2>&1 &
  started kvd
  for _ in $(seq 1 200); do grep -q "kvd ready" "$OUT/kvd.log" && return 0; sleep 0.05; done
  echo "kvd did not become ready: $(tail -2 "$OUT/kvd.log")" >&2; return 1
}

start_redis() { # name, extra args...
  local name=$1; shift
  mkdir -p "$WORK/data"
  taskset -c "$SERVER_CPU" redis-server --port 7401 --bind 127.0.0.1 --save '' --dir "$WORK/data" "$@" \
    >"$OUT/$name.log" 2>&1 &
  started "$name"
  wait_port 127.0.0.1 7401
  # Listening is not serving: wait (bounded) until it answers PING.
  for _ in $(seq 1 200); do
    [ "$(redis-cli -p 7401 ping 2>/dev/null)" = "PONG" ] && return 0
    sleep 0.05
  done
  echo "redis never answered PING" >&2; return 1
}

start_memcached() {
  # One worker thread: the same one core the other servers get. As root,
  # memcached insists on dropping to another user.
  local user=(); [ "$(id -u)" = 0 ] && user=(-u nobody)
  taskset -c "$SERVER_CPU" memcached -l 127.0.0.1 -p 7403 -U 0 -t 1 -m 2048 -c 4096 "${user[@]}" \
    >"$OUT/memcached.log" 2>&1 &
  started memcached
  wait_port 127.0.0.1 7403
}

start_etcd() {
  taskset -c "$SERVER_CPU" etcd --name m1 --data-dir "$WORK/data/etcd" \
    --listen-client-urls http://127.0.0.1:7404 --advertise-client-urls http://127.0.0.1:7404 \
    --listen-peer-urls http://127.0.0.1:7405 --initial-advertise-peer-urls http://127.0.0.1:7405 \
    --initial-cluster m1=http://127.0.0.1:7405 --initial-cluster-state new \
    --log-level error --logger zap >"$OUT/etcd.log" 2>&1 &
  started etcd-1-member
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:7404 --command-timeout=1s put __ready__ 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "etcd did not become ready: $(tail -2 "$OUT/etcd.log")" >&2; return 1
}

# bench LABEL PORT PROTOCOL kvbench-args...: one JSON report in $OUT/LABEL.json
bench() {
  local label=$1 port=$2 proto=$3; shift 3
  echo "  $label" >&2
  "$KVBENCH" --target "127.0.0.1:$port" --protocol "$proto" --cores "$CLIENT_CPU" -d "$DURATION" --warmup "$WARMUP" \
    --keys "$KEYS" --value-bytes "$VALUE" --label "$label" --json --server-pid "$SERVER_PID" \
    --hgrm-dir "$OUT/hgrm" "$@" >"$OUT/$label.json" 2>"$OUT/$label.err" || true
}

# name|kvbench arguments
WORKLOADS=(
  "set_c50_P1|-w set -c 50 -P 1"
  "get_c50_P1|-w get -c 50 -P 1 --preload"
  "set_c50_P16|-w set -c 50 -P 16"
  "get_c50_P16|-w get -c 50 -P 16 --preload"
  "set_c1_P1|-w set -c 1 -P 1"
  "mix90_zipf_c50_P1|-w mix:0.9 -c 50 -P 1 --dist zipf:0.99 --preload"
  "set_c50_open${RATE}|-w set -c 50 --rate $RATE"
)

# The floor: kvbench's CPU to the servers' CPU and back; fdatasync on the
# file system that holds the servers' data.
echo "floor probe" >&2
"$KVBENCH" floor --dir "$WORK" --cores "$CLIENT_CPU,$SERVER_CPU" --json >"$OUT/floor.json"

# Harness check: kvbench and Redis's own benchmark against the same Redis.
start_redis redis-check --appendonly no
redis-benchmark -p 7401 -t set -c 50 -P 1 -n 200000 -r "$KEYS" -d "$VALUE" --csv 2>/dev/null \
  | tail -1 >"$OUT/redis-benchmark-set_c50_P1.csv" || true
stop_server

for case in $CASES; do
  case $case in
    memory) servers="kvd redis-nopersist memcached" ;;
    durable) servers="kvd redis-aof-always etcd-1-member" ;;
    *) echo "unknown case $case" >&2; exit 2 ;;
  esac
  [ "$PEERS" = 1 ] || servers=kvd
  [ -z "$KVD_BASELINE" ] || servers="$servers kvd-baseline"
  echo "$case:" >&2
  for w in "${WORKLOADS[@]}"; do
    n=${w%%|*}
    read -r -a args <<<"${w#*|}"
    for server in $servers; do
      case $server in
        kvd)
          if [ "$case" = memory ]; then start_kvd --persistence none; else start_kvd --fsync always; fi
          bench "$case~kvd~$n" "$KVD_PORT" "$KVD_PROTOCOL" "${args[@]}" ;;
        kvd-baseline)
          if [ "$case" = memory ]; then KVD_BIN=$KVD_BASELINE start_kvd --persistence none
          else KVD_BIN=$KVD_BASELINE start_kvd --fsync always; fi
          SERVER_NAME=kvd-baseline
          bench "$case~$server~$n" "$KVD_PORT" "$KVD_PROTOCOL" "${args[@]}" ;;
        redis-nopersist) start_redis "$server" --appendonly no; bench "$case~$server~$n" 7401 resp "${args[@]}" ;;
        redis-aof-always)
          start_redis "$server" --appendonly yes --appendfsync always
          bench "$case~$server~$n" 7401 resp "${args[@]}" ;;
        memcached) start_memcached; bench "$case~$server~$n" 7403 memcached "${args[@]}" ;;
        etcd-1-member) start_etcd; bench "$case~$server~$n" 7404 etcd "${args[@]}" ;;
      esac
      stop_server
    done
    # One plot per case and workload: every server's slower operation.
    hgrms=()
    for server in $servers; do
      for op in set get; do
        f="$OUT/hgrm/$case~$server~$n-$op.hgrm"
        [ -f "$f" ] && hgrms+=("$f")
      done
    done
    [ ${#hgrms[@]} -gt 0 ] && "$KVBENCH" plot "${hgrms[@]}" -o "$OUT/plots/$case-$n.svg" \
      --title "$case, $n: latency by percentile" 2>/dev/null || true
  done
done

python3 bench/table.py "$OUT"
echo "reports: $OUT"
