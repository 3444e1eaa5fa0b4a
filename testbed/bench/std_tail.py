#!/usr/bin/env python3
"""Where a standard run's tail comes from, read from what the run left behind.

Usage: testbed/bench/std_tail.py target/loadtest/<run>

Reads the run's latencies.csv, report.json (the kills), the replicas' reconcile records and logs,
and prints, for the CRs that waited through no failover (the `others` of report.md's split):

- when the slowest 5 % arrived, by seconds since the last SIGKILL, against all of them;
- how long the members' child lists took (log lines "held shards changed" → "child caches
  listed"), by seconds since the last kill: at the start, kill + 0-5 s (the replacement joins,
  shards are handed to it), kill + 5-15 s (the dead replica's shards are taken), later;
- how many of the slowest 5 % waited while their owner's member was relisting (its child events
  reach the caches only once that list has ended), and for how much of their latency.

The CR's arrival in wall-clock time is not in latencies.csv (its clock starts at the schedule);
it is placed from the records: arrival → first reconcile is milliseconds for most CRs, so the
2nd percentile of (first reconcile − scheduled offset) is taken as the run's start.
"""
import bisect
import collections
import csv
import datetime
import glob
import json
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
NS = "kd-loadtest"


def micros(line):
    t = datetime.datetime.strptime(line[:26], "%Y-%m-%dT%H:%M:%S.%f")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e6


def read(run):
    recs = collections.defaultdict(list)
    for f in glob.glob(f"{run}/replicas/records/*.jsonl"):
        for line in open(f):
            r = json.loads(line)
            if r.get("kind") == "reconcile":
                recs[r["key"]].append(r)
    kills = sorted(k["at"] for k in (json.load(open(f"{run}/report.json")).get("failover") or {}).get("kills", []))
    rows = [r for r in csv.DictReader(open(f"{run}/latencies.csv")) if r["side"] == "operator"]
    return recs, kills, rows


def lists_of(run, start_text="child caches list again"):
    """(replica, context) → [(start, end)] of every child relist, from the replicas' logs.

    A relist pauses the member's child events until it ends ("child caches list again": before
    the segments, every change of the held shards; with them, only a gathering of every held
    shard). With `start_text="child caches list the acquired shards"`: the lists of acquired shards
    only, during which the shards held before keep their events (segments)."""
    out = collections.defaultdict(list)
    for f in glob.glob(f"{run}/replicas/logs/*.log"):
        replica = f.rsplit("/", 1)[-1][: -len(".log")]
        lines = [ANSI.sub("", line) for line in open(f)]
        # With segments, each list's end is its own line, keyed like its start.
        segmented = any("child caches merged" in line for line in lines)
        started = {}
        for line in lines:
            m = re.search(r"context=(\S+) generation=(\d+)(?: shards=(\d+))?", line)
            if not m:
                continue
            ctx, gen, shards = m.group(1), int(m.group(2)), m.group(3)
            if start_text in line:
                started.setdefault((ctx, gen, shards if segmented else None), micros(line))
            elif segmented and "child caches merged" in line:
                t0 = started.pop((ctx, gen, shards), None)
                if t0 is not None:
                    out[(replica, ctx)].append((t0, micros(line)))
            elif not segmented and "child caches listed" in line:
                for (c, g, s), t0 in list(started.items()):
                    if c == ctx and g <= gen:
                        out[(replica, ctx)].append((t0, micros(line)))
                        del started[(c, g, s)]
    return out


def since_kill(kills, t):
    i = bisect.bisect_right(kills, t)
    return (t - kills[i - 1]) / 1e6 if i else None


def phase(s):
    if s is None:
        return "start"
    return "kill+0-5" if s < 5 else "kill+5-15" if s < 15 else "later"


def main(run):
    recs, kills, rows = read(run)
    key = lambda r: f"{r['context']}/{NS}/{r['name']}"
    offsets = sorted(min(x["start"] for x in recs[key(r)]) - float(r["arrival_s"]) * 1e6 for r in rows if recs.get(key(r)))
    start = offsets[len(offsets) // 50]
    others = [r for r in rows if r["waited_for_failover"] == "false" and recs.get(key(r))]
    slow_at = sorted(float(r["seconds"]) for r in others)[int(len(others) * 0.95)]
    lists = lists_of(run)
    buckets = ["<5", "5-20", "20-60", ">=60", "before the first kill"]
    def bucket(s):
        if s is None:
            return buckets[4]
        return buckets[0] if s < 5 else buckets[1] if s < 20 else buckets[2] if s < 60 else buckets[3]
    every, slow = collections.Counter(), collections.Counter()
    frozen_n = frozen_s = latency_s = 0.0
    for r in others:
        arrival = start + float(r["arrival_s"]) * 1e6
        done = arrival + float(r["seconds"]) * 1e6
        b = bucket(since_kill(kills, arrival))
        every[b] += 1
        if float(r["seconds"]) < slow_at:
            continue
        slow[b] += 1
        owner = min(recs[key(r)], key=lambda x: x["start"])["replica"]
        f = sum(max(0.0, min(done, t1) - max(arrival, t0)) for t0, t1 in lists[(owner, r["context"])]) / 1e6
        frozen_n += f > 0
        frozen_s += f
        latency_s += float(r["seconds"])
    print(f"{run}: {len(others)} CRs waited through no failover; the slowest 5 % took >= {slow_at:.2f} s")
    print("arrival, seconds after the last kill | all | slowest 5 %")
    for b in buckets:
        print(f"  {b:>22} | {every[b]:4d} | {slow[b]:3d}")
    n_slow = sum(slow.values())
    print(f"slowest 5 % that waited while their owner's member relisted: {int(frozen_n)} of {n_slow},"
          f" {frozen_s:.1f} s of their {latency_s:.1f} s")
    by_phase = collections.defaultdict(list)
    for spans in lists.values():
        for t0, t1 in spans:
            by_phase[phase(since_kill(kills, t0))].append((t1 - t0) / 1e6)
    table("child relists, pausing the member's child events (one member, every kind)", by_phase)
    acquired = collections.defaultdict(list)
    for spans in lists_of(run, "child caches list the acquired shards").values():
        for t0, t1 in spans:
            acquired[phase(since_kill(kills, t0))].append((t1 - t0) / 1e6)
    table("lists of acquired shards only, no pause (one member, every kind)", acquired)


def table(title, by_phase):
    print(f"{title} | n | p50 s | max s")
    for p in ["start", "kill+0-5", "kill+5-15", "later"]:
        v = sorted(by_phase.get(p, []))
        if v:
            print(f"  {p:>10} | {len(v):4d} | {v[len(v) // 2]:.2f} | {v[-1]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1].rstrip("/"))
