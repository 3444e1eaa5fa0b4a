"""What the bench scripts share for reading the audit logs a loadtest run keeps
(target/loadtest/RUN/testbed/logs/kd-N/audit.log.gz)."""
import gzip, json, sys, glob, os
from datetime import datetime


def seconds(s):
    return datetime.fromisoformat(s.replace('Z', '+00:00')).timestamp()


def logs(run):
    """Every cluster's audit log of `run`; exits naming the folder when there is none."""
    found = sorted(glob.glob(os.path.join(run, 'testbed', 'logs', 'kd-*', 'audit.log*')))
    if not found:
        sys.exit(f'no audit logs under {run}/testbed/logs (runs before 2026-12-07 did not keep them)')
    return found


def entries(path):
    """The audit events of one log, gzipped or not; lines that are not JSON are skipped."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rt') as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue
