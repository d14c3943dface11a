#!/usr/bin/env bash
# A 3-node kvd cluster on this machine, for trying replication out.
#
#   tuning/local-cluster.sh            # start; Ctrl-C stops every node cleanly
#   DATA=/tmp/kvd-cluster NODES=5 tuning/local-cluster.sh
#
# Node i listens for clients on 127.0.0.1:(7378+i) and for peers on
# 127.0.0.1:(7470+10i) (+1 per extra core). Data, logs and the generated
# cluster secret live under $DATA (default ./data/cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-3}
DATA=${DATA:-./data/cluster}
CORES=${CORES:-all}
cargo build --release --quiet --bin kvd --bin kvctl
mkdir -p "$DATA"
[ -s "$DATA/secret" ] || head -c 32 /dev/urandom | base64 > "$DATA/secret"

peers=""
for i in $(seq 1 "$NODES"); do peers+="${peers:+,}$i=127.0.0.1:$((7470 + 10 * i))"; done

PIDS=()
stop() {
  echo "stopping nodes ${PIDS[*]}"
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

endpoints=""
for i in $(seq 1 "$NODES"); do
  port=$((7378 + i))
  endpoints+="${endpoints:+,}127.0.0.1:$port"
  target/release/kvd --node-id "$i" --cores "$CORES" --listen "127.0.0.1:$port" --peers "$peers" \
    --cluster-secret-file "$DATA/secret" --data-dir "$DATA/node-$i" >"$DATA/node-$i.log" 2>&1 &
  PIDS+=($!)
done
for i in $(seq 1 "$NODES"); do
  for _ in $(seq 1 600); do
    grep -q "kvd ready" "$DATA/node-$i.log" 2>/dev/null && break
    if ! kill -0 "${PIDS[$((i - 1))]}" 2>/dev/null; then
      echo "node $i failed to start:"; tail -5 "$DATA/node-$i.log"; exit 1
    fi
    sleep 0.1
  done
done
cat <<MSG
$NODES nodes are up (logs in $DATA/node-N.log). Try:
  export KVCTL_ENDPOINTS=$endpoints
  target/release/kvctl put greeting hello
  target/release/kvctl get greeting --consistency strict
  target/release/kvctl cluster status
Ctrl-C stops the cluster.
MSG
wait
