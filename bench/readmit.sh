#!/usr/bin/env bash
# Readmitting a node that lost its disk, measured: three durable kvd nodes
# on this machine hold DATA_MB of values; node 3 is killed, its data
# directory deleted, and it is started again with --join. Reports how long
# until every shard counts it a voter again (removed, re-added as a
# learner, filled from a snapshot and the log, promoted), and the write
# latency an open-loop client sees over WINDOW seconds from the join
# against WINDOW seconds of steady state (node 3's leaderships fail over
# before the join, outside both windows).
#
#   bench/readmit.sh                      # 100 MB of 1 KiB values
#   DATA_MB=1024 bench/readmit.sh
#   KVD=/path/to/other/kvd bench/readmit.sh     # another build
#   PERF_OUT=/tmp/node1.perf bench/readmit.sh   # also profiles node 1 from the join
#   KEEP=1 bench/readmit.sh                     # keeps the nodes' directories and logs
#
# Every process it starts it stops by PID (trap on exit); everything lives
# under a temporary directory that is removed at the end. Needs a release
# build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_MB=${DATA_MB:-100}
VALUE=${VALUE:-1024}
RATE=${RATE:-2000}
WINDOW=${WINDOW:-20}
KEYS=$((DATA_MB * 1024 * 1024 / VALUE))
KVD=${KVD:-target/release/kvd}
KVCTL=target/release/kvctl
KVBENCH=target/release/kvbench
for bin in "$KVD" "$KVCTL" "$KVBENCH"; do
  [ -x "$bin" ] || { echo "missing $bin: run cargo build --release" >&2; exit 2; }
done
WORK=$(mktemp -d /tmp/kvd-readmit.XXXXXX)
head -c 32 /dev/urandom | base64 >"$WORK/secret"
port() { echo $((7500 + 20 * $1 + $2)); } # node, offset
PEERS="1=127.0.0.1:$(port 1 10),2=127.0.0.1:$(port 2 10),3=127.0.0.1:$(port 3 10)"
declare -A PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# start NODE CPU [extra flags...]: starts a node and waits for its ready line.
start() {
  local id=$1 cpu=$2
  shift 2
  "$KVD" --node-id "$id" --cores "$cpu" --data-dir "$WORK/node-$id" \
    --listen "127.0.0.1:$(port "$id" 1)" --resp-listen "127.0.0.1:$(port "$id" 2)" \
    --http-listen "127.0.0.1:$(port "$id" 3)" --peers "$PEERS" --cluster-secret-file "$WORK/secret" \
    "$@" >>"$WORK/node-$id.log" 2>&1 &
  PIDS[$id]=$!
  for _ in $(seq 1 600); do
    grep -q "kvd ready" "$WORK/node-$id.log" && return 0
    kill -0 "${PIDS[$id]}" 2>/dev/null || { cat "$WORK/node-$id.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "node $id did not get ready in 60 s" >&2
  exit 1
}

# Whether node 1 sees node 3 as a voter of every shard it holds, no learner
# left, and no shard waiting on its old directory.
readmitted() {
  "$KVCTL" --endpoints "127.0.0.1:$(port 1 1)" cluster status -o json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
ok = all(3 in g["voters"] and not g["learners"] for c in s["cores"] for g in c["groups"] if 3 in g["replicas"])
ok = ok and all(not r["waiting_shards"] for c in s["cores"] for r in c.get("readmissions", []))
ok = ok and any(c.get("readmissions") for c in s["cores"])
sys.exit(0 if ok else 1)'
}

start 1 0
start 2 1
start 3 0
TARGETS="127.0.0.1:$(port 1 1),127.0.0.1:$(port 2 1)"
echo "loading $KEYS keys of $VALUE bytes ($DATA_MB MB)"
"$KVBENCH" --target "$TARGETS" --cores 1 -w set --keys "$KEYS" --value-bytes "$VALUE" --values random \
  --dist seq --requests "$KEYS" --warmup 0 -c 32 -P 8 >/dev/null
echo "steady state: $RATE writes/s for $WINDOW s"
"$KVBENCH" --target "$TARGETS" --cores 1 -w set --keys "$KEYS" --value-bytes "$VALUE" --values random \
  --rate "$RATE" -d "$WINDOW" --warmup 1 -c 16 --label steady --json >"$WORK/steady.json"

kill -9 "${PIDS[3]}"
wait "${PIDS[3]}" 2>/dev/null || true
unset 'PIDS[3]'
rm -rf "$WORK/node-3"
# The failover of node 3's leaderships is not what is measured: wait for it.
until "$KVCTL" --endpoints "127.0.0.1:$(port 1 1)" cluster status -o json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if all(g["leader"] in (1, 2) for c in s["cores"] for g in c["groups"]) else 1)'; do
  sleep 0.2
done
sleep 2
"$KVBENCH" --target "$TARGETS" --cores 1 -w set --keys "$KEYS" --value-bytes "$VALUE" --values random \
  --rate "$RATE" -d "$WINDOW" --warmup 0 -c 16 --label during --json >"$WORK/during.json" &
BENCH=$!
PIDS[bench]=$BENCH
t0=$(date +%s%N)
if [ -n "${PERF_OUT:-}" ]; then
  # A CPU profile of node 1 (the leader of half the shards) from the join.
  perf record -F 999 -g -o "$PERF_OUT" -p "${PIDS[1]}" -- sleep "$WINDOW" >/dev/null 2>&1 &
  PIDS[perf]=$!
fi
start 3 0 --join "127.0.0.1:$(port 1 10)"
until readmitted; do
  sleep 0.2
  if (($(date +%s%N) - t0 > 600 * 1000000000)); then echo "not readmitted in 600 s" >&2; exit 1; fi
done
t1=$(date +%s%N)
# kvbench exits non-zero if some writes failed: reported below, not fatal.
wait "$BENCH" || true
unset 'PIDS[bench]'
python3 - "$WORK/steady.json" "$WORK/during.json" "$(((t1 - t0) / 1000000))" "$DATA_MB" <<'EOF'
import json, sys
def set_stats(path):
    return json.load(open(path))["ops_by_type"]["set"]
steady, during = set_stats(sys.argv[1]), set_stats(sys.argv[2])
seconds, mb = int(sys.argv[3]) / 1000, sys.argv[4]
print(f"readmitted with {mb} MB in the cluster: {seconds:.1f} s from the start of kvd --join")
for name, op in (("steady", steady), ("during", during)):
    print(f"  writes {name:>6}: p50 {op['p50_ms']:.3f} ms  p99 {op['p99_ms']:.3f} ms  p99.9 {op['p999_ms']:.3f} ms  errors {op.get('errors', 0)}")
print(f"  p99 during / steady: {during['p99_ms'] / steady['p99_ms']:.2f}")
EOF
