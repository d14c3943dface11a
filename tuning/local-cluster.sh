#!/usr/bin/env bash
# A kvd cluster of N nodes on this machine, for trying replication out.
#
#   tuning/local-cluster.sh            # start 3 nodes; Ctrl-C stops every node cleanly
#   NODES=5 DATA=/tmp/kvd-cluster tuning/local-cluster.sh
#
# Every node has its own block of ports on $HOST (default 127.0.0.1),
# from $PORT_BASE (default 7000): node i listens on
#   PORT_BASE + 100*i + 1   native protocol (kvctl, kvbench)
#   PORT_BASE + 100*i + 2   RESP (redis-cli)
#   PORT_BASE + 100*i + 3   HTTP (curl, Prometheus)
#   PORT_BASE + 100*i + 10  peers, + 1 per extra core
# so node 1 serves kvctl on 7101, redis-cli on 7102 and curl on 7103.
# Data, logs and the generated cluster secret live under $DATA (default
# ./data/cluster). CORES (default 0) is each node's --cores. KVD and KVCTL
# name the binaries to run; without them the release build is made and used.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-3}
DATA=${DATA:-./data/cluster}
CORES=${CORES:-0}
HOST=${HOST:-127.0.0.1}
PORT_BASE=${PORT_BASE:-7000}
if [ -z "${KVD:-}" ] || [ -z "${KVCTL:-}" ]; then
  cargo build --release --quiet --bin kvd --bin kvctl
  KVD=target/release/kvd
  KVCTL=target/release/kvctl
fi
mkdir -p "$DATA"
[ -s "$DATA/secret" ] || head -c 32 /dev/urandom | base64 >"$DATA/secret"

port() { echo $((PORT_BASE + 100 * $1 + $2)); }
peers=""
for i in $(seq 1 "$NODES"); do peers+="${peers:+,}$i=$HOST:$(port "$i" 10)"; done

PIDS=()
stop() {
  trap - EXIT INT TERM
  echo "stopping nodes ${PIDS[*]}"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  exit 0
}
trap stop EXIT INT TERM

endpoints=""
for i in $(seq 1 "$NODES"); do
  endpoints+="${endpoints:+,}$HOST:$(port "$i" 1)"
  "$KVD" --node-id "$i" --cores "$CORES" --peers "$peers" --cluster-secret-file "$DATA/secret" \
    --listen "$HOST:$(port "$i" 1)" --resp-listen "$HOST:$(port "$i" 2)" --http-listen "$HOST:$(port "$i" 3)" \
    --data-dir "$DATA/node-$i" >"$DATA/node-$i.log" 2>&1 &
  PIDS+=($!)
  echo "node $i: pid $!, native $HOST:$(port "$i" 1), RESP $HOST:$(port "$i" 2), HTTP $HOST:$(port "$i" 3)"
done
for i in $(seq 1 "$NODES"); do
  for _ in $(seq 1 600); do
    grep -q "kvd ready" "$DATA/node-$i.log" 2>/dev/null && break
    if ! kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null; then
      echo "node $i failed to start:"
      tail -5 "$DATA/node-$i.log"
      exit 1
    fi
    sleep 0.1
  done
  grep -q "kvd ready" "$DATA/node-$i.log" || { echo "node $i did not get ready in 60 s"; exit 1; }
done
cat <<MSG
$NODES nodes are up (logs in $DATA/node-N.log). Try:
  export KVCTL_ENDPOINTS=$endpoints
  $KVCTL put greeting hello
  $KVCTL get greeting --consistency strict
  $KVCTL cluster status
  redis-cli -h $HOST -p $(port 1 2) GET greeting
  curl -s http://$HOST:$(port 2 3)/v1/kv/greeting
Ctrl-C stops the cluster.
MSG
wait
