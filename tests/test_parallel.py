"Worker processes of parallel_map: results in job order, and no orphans when the parent is killed."
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minitrain.parallel import parallel_map


def test_results_in_job_order_in_workers():
    assert parallel_map(operator.mul, [(2, 3), (4, 5), (6, 7)], n_jobs=2) == [6, 20, 42]


def _stat(pid: int | str) -> list[str] | None:
    "Fields of /proc/PID/stat after the command name (state, parent pid, ...); None once the process is gone."
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    except OSError: return None


def _children(pid: int) -> set[int]:
    stats = {int(p.name): _stat(p.name) for p in Path('/proc').glob('[0-9]*')}
    return {k for k, fields in stats.items() if fields and int(fields[1]) == pid}


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != 'Z'


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond(): return True
        time.sleep(0.2)
    return cond()


@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='reads the process table from /proc')
def test_workers_exit_when_the_parent_is_killed():
    code = 'import time\nfrom minitrain.parallel import parallel_map\nparallel_map(time.sleep, [(120,)] * 4, n_jobs=2)\n'
    parent = subprocess.Popen([sys.executable, '-c', code])
    try:
        # two pool workers (and the resource tracker) start as children of the parent
        assert _wait(lambda: len(_children(parent.pid)) >= 3, 60), 'workers did not start'
        time.sleep(1)
        kids = _children(parent.pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _wait(lambda: not any(_alive(k) for k in kids), 15), 'workers outlived their killed parent'
    finally:
        if parent.poll() is None: parent.kill()
