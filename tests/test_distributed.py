"One run on two gloo processes (torchrun's engine, elastic_launch): the same model, metrics and files as one process."
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from minitrain import DataLoaders, TensorLoader, distributed_loader, is_main_process, rank, world_size

# One script for every launch: `python script.py OUT LOADER MODE` or under torchrun, unchanged.
SCRIPT = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path
    import torch, torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from minitrain import *
    from minitrain.dynamics import TrainingDynamicsCB

    out, loader, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    world = int(os.environ.get('WORLD_SIZE', 1))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    bs = 16 // world                                   # the same global batch of 16 on 1 or 2 processes
    if loader == 'tensor': dls = DataLoaders(TensorLoader(x[:64], y[:64], bs=bs), TensorLoader(x[64:], y[64:], bs=bs))
    else: dls = DataLoaders(DataLoader(TensorDataset(x[:64], y[:64]), batch_size=bs),
                            DataLoader(TensorDataset(x[64:], y[64:]), batch_size=bs))
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    class FailOnRank1(Callback):
        def before_epoch(self, learn):
            if rank() == 1 and learn.epoch == 1: raise RuntimeError('rank 1 gives up at epoch 1')
    from minitrain.probmaps import ProbMapCB
    probmap = ProbMapCB(resolution=8, data=(x[:64], y[:64]), fill='mean')
    cbs = [DDPCB(timeout_s=60), metrics, ProgressCB(), TrainingDynamicsCB(path=out / 'run', every=1), probmap]
    if mode == 'fail': cbs.append(FailOnRank1())
    learn = TrainLearner(model, dls, F.cross_entropy, lr=0.5, cbs=cbs)
    learn.fit(2)
    learn.save(out / 'model.pt')                       # rank 0 writes; every rank returns once the file is there
    (out / f'history{rank()}.json').write_text(json.dumps(metrics.history))
    again = TrainLearner(nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2)), dls, F.cross_entropy, lr=0.5)
    again.load(out / 'model.pt')                       # at once, on every rank
    (out / f'loaded{rank()}.json').write_text(json.dumps({'epoch': again.epoch, 'w': again.model[0].weight.sum().item()}))
    if is_main_process():                              # the maps render from the unwrapped model, after the group is gone
        (out / 'probmap.json').write_text(json.dumps([len(probmap.snapshots), list(probmap.maps()[-1].shape)]))
''')


def _launch(tmp_path: Path, loader: str, mode: str = 'ok', nproc: int = 2) -> Path:
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    out = tmp_path / f'{nproc}p'
    out.mkdir()
    script = tmp_path / 'train.py'
    script.write_text(SCRIPT)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, rdzv_backend='c10d',
                          rdzv_endpoint='localhost:0', run_id=uuid.uuid4().hex, max_restarts=0, monitor_interval=0.2,
                          start_method='spawn')
    elastic_launch(config, sys.executable)(str(script), str(out), loader, mode)
    return out


def _single(tmp_path: Path, loader: str) -> Path:
    out = tmp_path / '1p'
    out.mkdir()
    script = tmp_path / 'train.py'
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    done = subprocess.run([sys.executable, str(script), str(out), loader, 'ok'], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize('loader', ['tensor', 'torch'])
def test_two_ranks_train_the_model_one_process_trains_on_the_same_global_batches(tmp_path, loader):
    one, two = _single(tmp_path, loader), _launch(tmp_path, loader)
    a, b = (torch.load(out / 'model.pt', weights_only=True)['model'] for out in (one, two))
    assert list(a) == list(b) == ['0.weight', '0.bias', '2.weight', '2.bias']     # saved unwrapped, by rank 0
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    h1 = json.loads((one / 'history0.json').read_text())
    for r in (0, 1):    # every rank holds the metrics of the whole epoch, summed across ranks
        h2 = json.loads((two / f'history{r}.json').read_text())
        assert [(row['epoch'], row['phase']) for row in h2] == [(row['epoch'], row['phase']) for row in h1]
        for r1, r2 in zip(h1, h2):
            assert r2['accuracy'] == pytest.approx(r1['accuracy'], abs=1e-9)
            assert r2['loss'] == pytest.approx(r1['loss'], rel=1e-5)
    # one run folder, written by rank 0, with the rows of the one-process run
    assert sorted(p.name for p in (two / 'run').iterdir()) == sorted(p.name for p in (one / 'run').iterdir())
    rows1, rows2 = ((out / 'run/metrics.csv').read_text().splitlines() for out in (one, two))
    assert len(rows1) == len(rows2) == 4 and rows1[0] == rows2[0]
    # save then load at once on every rank: both ranks read the file rank 0 had just finished
    loaded = [json.loads((two / f'loaded{r}.json').read_text()) for r in (0, 1)]
    assert loaded[0] == loaded[1] and loaded[0]['epoch'] == 2
    assert loaded[0]['w'] == pytest.approx(b['0.weight'].sum().item(), abs=1e-5)
    assert json.loads((two / 'probmap.json').read_text()) == [3, [8, 8]]   # before training and after each epoch


def test_minitrain_train_under_torchrun_shares_the_seeds_between_the_ranks(tmp_path):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    cfg = tmp_path / 'exp.toml'
    cfg.write_text(f'workload = "sparse_parity"\nseeds = 4\nepochs = 2\nevery = 1\nn_jobs = 1\n'
                   f'out = "{(tmp_path / "runs").as_posix()}"\n[model]\nhidden = 8\n')
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2, rdzv_backend='c10d', rdzv_endpoint='localhost:0',
                          run_id=uuid.uuid4().hex, max_restarts=0, monitor_interval=0.2, start_method='spawn')
    elastic_launch(config, sys.executable)(str(Path(sys.executable).with_name('minitrain')), 'train', str(cfg))
    metas = {s: json.loads((tmp_path / 'runs' / f'seed{s}' / 'run.json').read_text()) for s in range(4)}
    assert all(m['status'] == 'finished' for m in metas.values())
    pids = {s: m['recorded_by']['pid'] for s, m in metas.items()}
    assert pids[0] == pids[2] != pids[1] == pids[3]     # rank 0 trained seeds 0 and 2, rank 1 seeds 1 and 3
    for s in range(4):                                   # each once: every checkpoint one row
        assert (tmp_path / 'runs' / f'seed{s}' / 'metrics.csv').read_text().count('\n') == 1 + 3


def test_a_failing_rank_stops_the_other_with_its_error(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    with pytest.raises(ChildFailedError) as info:
        _launch(tmp_path, 'tensor', 'fail')
    # rank 1's own error is on record (DDPCB writes torchrun's error file before the process ends); its exit code is 1,
    # or -15 when rank 0 saw the broken connection first and torchrun stopped rank 1 a moment before it exited
    failure = info.value.failures[1]
    assert failure.exitcode in (1, -15) and 'rank 1 gives up at epoch 1' in failure.message['message']
    assert not list((tmp_path / '2p').glob('history*.json'))       # neither rank went on as if nothing happened
    status = json.loads((tmp_path / '2p/run/run.json').read_text())['status']
    assert status in ('failed', 'running')   # rank 0 was stopped by torchrun, possibly before its cleanup ran


def test_ranks_share_the_data_without_overlap():
    x = torch.arange(12.)
    for loader in (TensorLoader(x, bs=2), TensorLoader(x, bs=2, shuffle=True)):
        shares = [torch.cat([b[0] for b in distributed_loader(loader, r, 3)]) for r in range(3)]
        assert sorted(torch.cat(shares).tolist()) == x.tolist()
    train = distributed_loader(TensorLoader(x, bs=2, shuffle=True), 0, 2)
    train.sampler.set_epoch(0); first = torch.cat([b[0] for b in train])
    train.sampler.set_epoch(1); second = torch.cat([b[0] for b in train])
    assert not torch.equal(first, second)                            # set_epoch reshuffles


def test_one_process_is_rank_0_of_1():
    assert (rank(), world_size(), is_main_process()) == (0, 1, True)


def _linear_fit(cbs, loader='torch'):
    import torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from minitrain import TrainLearner
    torch.manual_seed(0)
    x = torch.randn(64, 3); y = x @ torch.tensor([[1.], [-2.], [.5]])
    if loader == 'torch': dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=8), DataLoader(TensorDataset(x, y), batch_size=16))
    else: dls = DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x, y, bs=16))
    learn = TrainLearner(nn.Linear(3, 1), dls, F.mse_loss, lr=0.1, cbs=cbs)
    return learn.fit(2)


def test_accelerate_cb_says_how_to_get_accelerate(monkeypatch):
    from minitrain.accel import AccelerateCB
    monkeypatch.setitem(sys.modules, 'accelerate', None)      # as if it were not installed
    with pytest.raises(ImportError, match=r"AccelerateCB needs Hugging Face Accelerate.*pip install accelerate"):
        AccelerateCB()


def test_accelerate_cb_trains_as_the_plain_learner_and_gives_the_model_back():
    pytest.importorskip('accelerate', reason="Hugging Face Accelerate is optional: pip install 'minitrain[accelerate]'")
    from minitrain.accel import AccelerateCB
    cb = AccelerateCB(cpu=True)
    calls = []
    real = cb.accelerator.backward
    cb.accelerator.backward = lambda loss: (calls.append(1), real(loss))
    plain, accelerated = _linear_fit([]), _linear_fit([cb])
    assert len(calls) == 2 * 8                                       # every training batch went through the accelerator
    torch.testing.assert_close(accelerated.model.weight, plain.model.weight)
    assert type(accelerated.model).__name__ == 'Linear' and 'backward' not in vars(accelerated)
    assert isinstance(accelerated.dls.train, torch.utils.data.DataLoader) and len(accelerated.dls.train) == 8
