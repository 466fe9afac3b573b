"Worker processes of parallel_map: results in job order, and no orphans when the parent is killed."
import importlib.util
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from minitrain.dynamics import load_runs, run_seeds
from minitrain.parallel import parallel_map
from minitrain.workloads import GrokkingPreset, make_grokking_learner

TINY = GrokkingPreset(p=11, d_model=16, n_heads=2, d_head=8, d_mlp=32, every=2)


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


def test_a_flat_script_fits_hmms_on_two_workers_without_a_main_guard(tmp_path):
    script = tmp_path / 'flat_hmm.py'     # the way a user writes a first script: no `if __name__ == '__main__':`
    script.write_text(textwrap.dedent('''
        import numpy as np, pandas as pd
        from minitrain.hmm import fit_hmms

        def run(seed):                    # two regimes, a jump in the middle
            rng = np.random.default_rng(seed)
            x = np.r_[rng.normal(0, 0.1, 30), rng.normal(3, 0.1, 30)]
            return pd.DataFrame({'epoch': np.arange(60), 'a': x, 'b': -x + rng.normal(0, 0.1, 60)})

        sel = fit_hmms([run(s) for s in range(6)], features=['a', 'b'], ks=[1, 2, 3], restarts=2, n_jobs=2)
        print('K', sel.k)
    '''))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ['K', '2']


def _has_dask() -> bool:
    return importlib.util.find_spec('distributed') is not None

needs_dask = pytest.mark.skipif(not _has_dask(), reason="dask.distributed is not installed: pip install 'minitrain[dask]' "
                                                        "(make install does) to run the cluster tests")


@pytest.fixture(scope='module')
def dask_client():
    from dask.distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
         Client(cluster) as client:
        yield client


def _worker_pid(x):
    time.sleep(0.2)
    return x, os.getpid()


@needs_dask
def test_parallel_map_runs_on_a_dask_cluster_by_name_or_by_parallel_config(dask_client):
    import joblib
    workers = set(dask_client.run(os.getpid).values())
    by_name = parallel_map(_worker_pid, [(i,) for i in range(6)], backend='dask')
    with joblib.parallel_config(backend='dask'):
        by_config = parallel_map(_worker_pid, [(i,) for i in range(6)])    # n_jobs=1: the backend decides
    for results in (by_name, by_config):
        assert [x for x, _ in results] == list(range(6))
        assert {pid for _, pid in results} <= workers and os.getpid() not in {pid for _, pid in results}


@needs_dask
def test_run_seeds_on_dask_writes_the_rows_of_the_sequential_run(tmp_path, dask_client):
    make = partial(make_grokking_learner, preset=TINY)
    run_seeds(make, [0, 1], tmp_path / 'seq', epochs=4, every=2)
    results = run_seeds(make, [0, 1], tmp_path / 'dask', epochs=4, every=2, backend='dask')
    assert [r['status'] for r in results] == ['trained', 'trained']
    for a, b in zip(load_runs(tmp_path / 'seq'), load_runs(tmp_path / 'dask')):
        pd.testing.assert_frame_equal(a, b)
