#!/usr/bin/env python3
"""Prints compare.sh's table from the reports in its output directory.

Rows are case~server~workload JSON reports written by kvbench --json. For each
case and workload, kvd comes first and every peer gets two ratios, both above 1
where kvd does better: x_ops = kvd's throughput / the peer's, x_p99 = the
peer's p99 / kvd's. p50 and p99 are those of the slower operation of the run.
"""
import json
import os
import sys

out = sys.argv[1]
ORDER = ["set_c50_P1", "get_c50_P1", "set_c50_P16", "get_c50_P16", "set_c1_P1", "mix90_zipf_c50_P1", "set_c50_open"]


def order(wl):
    for i, prefix in enumerate(ORDER):
        if wl.startswith(prefix):
            return i
    return len(ORDER)


floor = os.path.join(out, "floor.json")
if os.path.exists(floor):
    f = json.load(open(floor))
    print(f"floor (fdatasync in {f['dir']}):")
    for p in f["probes"]:
        print(f"  {p['probe']:28} n={p['n']:<6} p50_us={p['p50_us']:<8.1f} p99_us={p['p99_us']:.1f}")
    print()

rows = {}
for name in sorted(os.listdir(out)):
    if not name.endswith(".json") or name.count("~") != 2:
        continue
    case, server, wl = name[:-5].split("~")
    try:
        r = json.load(open(os.path.join(out, name)))
    except ValueError:
        err = open(os.path.join(out, name[:-5] + ".err")).read().strip().splitlines()
        print(f"FAILED {name}: {err[-1] if err else 'no output'}", file=sys.stderr)
        rows.setdefault((case, wl), {})[server] = None
        continue
    used = [o for o in r["ops_by_type"].values() if o["count"] > 0]
    p50 = max((o["p50_ms"] for o in used), default=0.0)
    p99 = max((o["p99_ms"] for o in used), default=0.0)
    cpu = (r["run"]["server_cpu_s_per_mop"] or 0.0)
    other = r["run"].get("other_cpus") or 0.0
    rows.setdefault((case, wl), {})[server] = (r["ops_per_sec"], p50, p99, cpu, r["errors"] + r.get("unanswered", 0), other)

head = f"{'case':8} {'workload':20} {'server':17} {'ops/s':>9} {'p50_ms':>8} {'p99_ms':>8} {'cpu_us/op':>9} {'errors':>6} {'x_ops':>6} {'x_p99':>6} {'other':>5}"
print(head)
for (case, wl), servers in sorted(rows.items(), key=lambda kv: (kv[0][0] != "memory", kv[0][0], order(kv[0][1]))):
    kvd = servers.get("kvd")
    for server, row in sorted(servers.items(), key=lambda s: (s[0] != "kvd", s[0])):
        if row is None:
            print(f"{case:8} {wl:20} {server:17} {'FAILED':>9}")
            continue
        ops, p50, p99, cpu, err, other = row
        x_ops = x_p99 = ""
        if server != "kvd" and kvd:
            # Open loop: ops/s is the offered load, the same for all.
            x_ops = "-" if "_open" in wl else f"{kvd[0] / ops:.2f}" if ops else "-"
            x_p99 = f"{p99 / kvd[2]:.2f}" if kvd[2] else "-"
        print(f"{case:8} {wl:20} {server:17} {ops:9.0f} {p50:8.3f} {p99:8.3f} {cpu:9.1f} {err:6} {x_ops:>6} {x_p99:>6} {other:5.2f}")
print("x_ops = kvd ops/s / peer ops/s; x_p99 = peer p99 / kvd p99 (above 1: kvd ahead); "
      "cpu_us/op: server CPU per operation;\n"
      "other: CPUs busy with neither kvbench nor the server during the run (other processes: noise);\n"
      "_open rows: open loop, ops/s is the offered load and latency runs from each request's intended send time")

check = os.path.join(out, "redis-benchmark-set_c50_P1.csv")
if os.path.exists(check) and open(check).read().strip():
    fields = [x.strip('"') for x in open(check).read().strip().split(",")]
    ours = rows.get(("memory", "set_c50_P1"), {}).get("redis-nopersist")
    line = f"harness check, Redis without persistence, SET c50 P1: redis-benchmark {float(fields[1]):.0f} ops/s"
    if len(fields) > 4:
        line += f" (p50 {fields[4]} ms)"
    if ours:
        line += f"; kvbench {ours[0]:.0f} ops/s (p50 {ours[1]:.3f} ms)"
    print(line)
