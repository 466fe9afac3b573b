"""Cost of DistributedDataParallel in minitrain (CPU, gloo), on an MLP over 8,192 examples of 64 features.

1. Wrapping: `DDPCB` in a process group of one (the model in DDP, the loaders split one way) against the same fit
   without it, in this process, interleaved, median of 5. Expect about 1.0x: DDP's all-reduce of one rank is cheap.
2. Scaling: the same epochs on 2 processes (torchrun's engine, each on half of every global batch) against 1
   process. On a 2-core machine expect little gain: the point is that it is correct (tests) and what it costs.
Times are of `fit` alone, measured inside the processes (start-up and rendezvous excluded).
"""
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist

FIT = textwrap.dedent('''
    import json, os, sys, time
    import torch, torch.nn.functional as F
    from torch import nn
    from minitrain import DataLoaders, DDPCB, TensorLoader, TrainLearner, rank

    def fit(epochs=3, ddp=True):
        world = int(os.environ.get('WORLD_SIZE', 1))
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8192, 64, generator=g); y = (x[:, :8].sum(1) > 0).long()
        bs = 256 // world                                  # a global batch of 256 however many processes
        dls = DataLoaders(TensorLoader(x, y, bs=bs, shuffle=True), TensorLoader(x[:2048], y[:2048], bs=512 // world))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))
        learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=[DDPCB()] if ddp else [])
        t = time.perf_counter()
        learn.fit(epochs)
        return time.perf_counter() - t

    if __name__ == '__main__':
        seconds = fit()
        if rank() == 0: print(json.dumps({'seconds': seconds}))
''')


def wrapping(script: Path, repeats: int = 5) -> tuple[float, float]:
    "Median fit time without DDPCB, and with it in a gloo process group of one process."
    sys.path.insert(0, str(script.parent))
    from fit_ddp import fit
    dist.init_process_group('gloo', init_method=f'file://{script.parent}/rendezvous', rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=60))
    plain, wrapped = [], []
    fit(1, False), fit(1, True)                           # warm-up
    for _ in range(repeats):
        plain.append(fit(ddp=False))
        wrapped.append(fit(ddp=True))
    dist.destroy_process_group()
    return statistics.median(plain), statistics.median(wrapped)


def processes(script: Path, nproc: int) -> float:
    "Fit time of rank 0 with `nproc` processes (torchrun), or in a fresh single process for `nproc=1`."
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    cmd = [sys.executable, str(script)]
    if nproc > 1:
        cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--rdzv-backend=c10d',
               '--rdzv-endpoint=localhost:0', f'--rdzv-id={uuid.uuid4().hex}', str(script)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])['seconds']


if __name__ == '__main__':
    with tempfile.TemporaryDirectory() as d:
        script = Path(d) / 'fit_ddp.py'
        script.write_text(FIT)
        plain, wrapped = wrapping(script)
        print(f'1 process, no DDP: {plain:.2f} s; DDPCB in a group of 1: {wrapped:.2f} s   ratio {wrapped / plain:.2f}x')
        one = statistics.median(processes(script, 1) for _ in range(3))
        two = statistics.median(processes(script, 2) for _ in range(3))
        print(f'1 process: {one:.2f} s; 2 processes (torchrun, gloo): {two:.2f} s   ratio {two / one:.2f}x '
              f'({os.cpu_count()} cores: 2 processes share them with the all-reduce)')
