#!/usr/bin/env python3
"""Service creates as the API servers timed them, from the audit logs a loadtest run keeps
(target/loadtest/RUN/testbed/logs/kd-N/audit.log.gz): the floor's (namespace `kd-loadtest-floor`)
against the operator's (any other namespace), ClusterIP Services against headless ones (`kdhs-*`,
no ClusterIP to allocate). For the slow ones (over 0.5 s) that the API server annotated with its
latency breakdown, it also gives the share of their time spent in etcd and in APF's queue: what is
left is the handler's own time, which for a Service create is mostly its ClusterIP allocation.

  python3 testbed/bench/service_creates.py target/loadtest/RUN
"""
import sys

from audit import entries, logs, seconds


def duration(v):
    """'12.5ms', '1.2s', '40µs' (Go's time.Duration strings) in seconds."""
    for unit, f in (('ms', 1e-3), ('µs', 1e-6), ('us', 1e-6), ('ns', 1e-9), ('s', 1.0)):
        if v.endswith(unit):
            try:
                return float(v[: -len(unit)]) * f
            except ValueError:
                return 0.0
    return 0.0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float('nan')


def main(run):
    rows = {}
    for path in logs(run):
        for e in entries(path):
            ref = e.get('objectRef', {})
            if ref.get('resource') != 'services' or ref.get('subresource'):
                continue
            if e.get('verb') not in ('create', 'patch') or e.get('responseStatus', {}).get('code') != 201:
                continue
            who = 'floor' if ref.get('namespace') == 'kd-loadtest-floor' else 'operator'
            side = '%s (%s)' % (who, 'apply' if e['verb'] == 'patch' else 'POST')
            kind = 'headless' if ref.get('name', '').startswith('kdhs-') else 'ClusterIP'
            took = seconds(e['stageTimestamp']) - seconds(e['requestReceivedTimestamp'])
            ann = e.get('annotations', {})
            # (None: not annotated; the API server annotates only some slow requests.)
            etcd = duration(ann['apiserver.latency.k8s.io/etcd']) if 'apiserver.latency.k8s.io/etcd' in ann else None
            apf = duration(ann.get('apiserver.latency.k8s.io/apf-queue-wait', '0s'))
            rows.setdefault((side, kind), []).append((took, etcd, apf))
    print('| side | Service | creates | p50 s | p99 s | max s | over 0.5 s | of those: etcd / APF share |')
    print('|---|---|---|---|---|---|---|---|')
    for (side, kind), xs in sorted(rows.items()):
        took = [x[0] for x in xs]
        slow = [x for x in xs if x[0] > 0.5]
        annotated = [x for x in slow if x[1] is not None]
        share = '—'
        if annotated:
            total = sum(x[0] for x in annotated)
            share = '%.0f %% / %.0f %% (%d annotated)' % (
                100 * sum(x[1] for x in annotated) / total, 100 * sum(x[2] for x in annotated) / total, len(annotated))
        elif slow:
            share = 'not annotated'
        print('| %s | %s | %d | %.3f | %.3f | %.3f | %d | %s |' % (
            side, kind, len(xs), pct(took, 0.5), pct(took, 0.99), max(took), len(slow), share))


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
