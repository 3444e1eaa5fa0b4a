#!/usr/bin/env python3
"""Writes in flight at once, as the API servers saw them, from the audit logs a loadtest run keeps
(target/loadtest/RUN/testbed/logs/kd-N/audit.log.gz): for each cluster, the most writes the server
was serving at the same moment (from a request's receipt to its response), the floor's (namespace
`kd-loadtest-floor`) apart from the operator's (any other namespace). Counted are the writes that
pass the operator's write gate (`queue/gate.rs`): creates, patches, updates and deletes, but not
status writes (never held), Leases (the shard protocol) or Events. Only writes by ServiceAccounts
are counted (the operator's replicas, and the floor when it writes as the operator).

  python3 testbed/bench/writes_in_flight.py target/loadtest/RUN
"""
import os, sys

from audit import entries, logs, seconds

WRITES = {'create', 'patch', 'update', 'delete'}
UNGATED = {'leases', 'events'}


def peak(spans):
    """The most spans (start, end) open at one moment; an end at the same moment as a start
    counts first (the slot was free again)."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def main(run):
    found = logs(run)
    print(f'{"cluster":<8} {"operator: peak":>15} {"writes":>7} {"floor: peak":>12} {"writes":>7}')
    for path in found:
        sides = {'operator': [], 'floor': []}
        for e in entries(path):
            if e.get('stage') != 'ResponseComplete' or e.get('verb') not in WRITES:
                continue
            if not e.get('user', {}).get('username', '').startswith('system:serviceaccount:'):
                continue
            ref = e.get('objectRef', {})
            if ref.get('resource') in UNGATED or ref.get('subresource') == 'status':
                continue
            side = 'floor' if ref.get('namespace') == 'kd-loadtest-floor' else 'operator'
            sides[side].append((seconds(e['requestReceivedTimestamp']), seconds(e['stageTimestamp'])))
        cluster = os.path.basename(os.path.dirname(path))
        op, fl = sides['operator'], sides['floor']
        print(f'{cluster:<8} {peak(op):>15} {len(op):>7} {peak(fl):>12} {len(fl):>7}')


if __name__ == '__main__':
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
