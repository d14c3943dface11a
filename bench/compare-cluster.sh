#!/usr/bin/env bash
# Side by side: a 3-node kvd cluster and a 3-member etcd cluster, durable
# (fsync on every write), all servers pinned to the same CPUs, driven by the
# same kvbench settings from another CPU (kvd: native protocol, each request
# to its shard's leader; etcd: v3 JSON gateway, to the leader).
#
#   bench/compare-cluster.sh
#   DURATION=5 CLIENTS=100 bench/compare-cluster.sh
#
# Installs nothing. Needs a release build and etcd + etcdctl (Debian:
# apt-get install etcd-server etcd-client). Stops every process it starts by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CLIENTS=${CLIENTS:-100}
VALUE=${VALUE:-256}
OUT=${OUT:-bench/out/cluster-$(date -u +%Y%m%dT%H%M%SZ)}
KVD=target/release/kvd
KVBENCH=target/release/kvbench
for bin in "$KVD" "$KVBENCH"; do
  [ -x "$bin" ] || { echo "missing $bin: run cargo build --release" >&2; exit 2; }
done
for t in etcd etcdctl; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install etcd-server etcd-client" >&2; exit 2; }
done
mkdir -p "$OUT"
WORK=$(mktemp -d -p "${TMPDIR:-/tmp}" kvd-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# bench LABEL TARGETS PROTOCOL kvbench-args...
bench() {
  local label=$1 targets=$2 proto=$3; shift 3
  "$KVBENCH" --target "$targets" --protocol "$proto" --cores "$CLIENT_CPU" -d "$DURATION" --warmup "$WARMUP" \
    --keys 100000 --value-bytes "$VALUE" -w set --label "$label" --json --hgrm-dir "$OUT/hgrm" "$@" \
    >"$OUT/$label.json" 2>"$OUT/$label.err" || true
}

"$KVBENCH" floor --dir "$WORK" --cores "$CLIENT_CPU,$SERVER_CPU" >"$OUT/floor.txt"

# ---- etcd, 3 members ----
# Member i: clients on 24i1, peers on 24i2.
ic="m1=http://127.0.0.1:2412,m2=http://127.0.0.1:2422,m3=http://127.0.0.1:2432"
for i in 1 2 3; do
  taskset -c "$SERVER_CPU" etcd --name "m$i" --data-dir "$WORK/etcd-m$i" \
    --listen-client-urls "http://127.0.0.1:24${i}1" --advertise-client-urls "http://127.0.0.1:24${i}1" \
    --listen-peer-urls "http://127.0.0.1:24${i}2" --initial-advertise-peer-urls "http://127.0.0.1:24${i}2" \
    --initial-cluster "$ic" --initial-cluster-state new --initial-cluster-token "kvd-bench-$$" \
    --log-level error --logger zap >"$OUT/etcd-m$i.log" 2>&1 &
  PIDS+=($!)
done
eps="127.0.0.1:2411,127.0.0.1:2421,127.0.0.1:2431"
ready=0
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$eps" --command-timeout=1s put __ready__ 1 >/dev/null 2>&1 && { ready=1; break; }
  sleep 0.2
done
[ "$ready" = 1 ] || { echo "etcd did not become ready: $(tail -2 "$OUT/etcd-m1.log")" >&2; exit 1; }
leader=$(ETCDCTL_API=3 etcdctl --endpoints "$eps" endpoint status -w json | python3 -c '
import json, sys
for s in json.load(sys.stdin):
    if s["Status"]["header"]["member_id"] == s["Status"]["leader"]:
        print(s["Endpoint"].replace("http://", ""))')
bench "etcd-3-members~c$CLIENTS" "$leader" etcd -c "$CLIENTS"
bench "etcd-3-members~c1" "$leader" etcd -c 1
for pid in "${PIDS[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
PIDS=()

# ---- kvd, 3 nodes ----
head -c 32 /dev/urandom | base64 >"$WORK/secret"
peers="1=127.0.0.1:7481,2=127.0.0.1:7491,3=127.0.0.1:7501"
for i in 1 2 3; do
  taskset -c "$SERVER_CPU" "$KVD" --node-id "$i" --cores "$SERVER_CPU" --listen "127.0.0.1:737$i" --peers "$peers" \
    --resp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --cluster-secret-file "$WORK/secret" --data-dir "$WORK/kvd-$i" --fsync always >"$OUT/kvd-$i.log" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 200); do grep -q "kvd ready" "$OUT/kvd-$i.log" && break; sleep 0.05; done
done
targets="127.0.0.1:7371,127.0.0.1:7372,127.0.0.1:7373"
for _ in $(seq 1 200); do
  target/release/kvctl --endpoints 127.0.0.1:7371 -o json cluster status 2>/dev/null \
    | python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(g["leader"] for c in s["cores"] for g in c["groups"]) and len(s["endpoints"])==3 else 1)' \
    && break
  sleep 0.1
done
bench "kvd-3-nodes~c$CLIENTS" "$targets" native --route leader -c "$CLIENTS"
bench "kvd-3-nodes~c1" "$targets" native --route leader -c 1

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = {}
for f in sorted(os.listdir(out)):
    if not f.endswith(".json"):
        continue
    server, wl = f[:-5].split("~")
    try:
        r = json.load(open(os.path.join(out, f)))
    except ValueError:
        print(f"FAILED {f}: {open(os.path.join(out, f[:-5] + '.err')).read().strip().splitlines()[-1:]}", file=sys.stderr)
        continue
    s = r["ops_by_type"]["set"]
    rows.setdefault(wl, {})[server] = (r["ops_per_sec"], s["p50_ms"], s["p99_ms"], r["errors"])
print(f"{'workload':10} {'server':16} {'ops/s':>9} {'p50_ms':>8} {'p99_ms':>8} {'errors':>6} {'kvd/etcd':>9}")
for wl, servers in sorted(rows.items()):
    kvd = servers.get("kvd-3-nodes")
    for server, (ops, p50, p99, err) in sorted(servers.items(), key=lambda s: not s[0].startswith("kvd")):
        ratio = f"{kvd[0] / ops:.1f}x" if kvd and server != "kvd-3-nodes" and ops else ""
        print(f"SET_{wl:6} {server:16} {ops:9.0f} {p50:8.3f} {p99:8.3f} {err:6} {ratio:>9}")
PY
cat "$OUT/floor.txt"
echo "reports: $OUT"
