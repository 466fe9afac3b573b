"Core callbacks: metrics against hand computations, devices, progress output, schedules, LR finder, seeds."
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn, optim
from torch.optim import lr_scheduler

from minitrain import (BatchSchedCB, BatchTransformCB, Callback, DataLoaders, DeviceCB, EpochSchedCB, MetricsCB,
                       MulticlassAccuracy, OneCycleCB, ProgressCB, RecorderCB, SingleBatchCB, TensorLoader,
                       TrainLearner, get_lr, plot_lr_find, set_seed, to_cpu, to_device)
from conftest import make_dls


def test_metrics_match_hand_computation():
    "Loss weighted by batch size and accuracy over a valid set with an uneven last batch."
    set_seed(0)
    x, y = torch.randn(23, 4), torch.randint(0, 3, (23,))
    dls = DataLoaders(TensorLoader(x, y, bs=5), TensorLoader(x, y, bs=5))
    model = nn.Linear(4, 3)
    m = MetricsCB(accuracy=MulticlassAccuracy())
    TrainLearner(model, dls, F.cross_entropy, cbs=[m]).fit(1, train=False)
    with torch.no_grad(): logits = model(x)
    assert m.history == [{'epoch': 0, 'phase': 'valid', 'loss': pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6),
                          'accuracy': pytest.approx((logits.argmax(1) == y).float().mean().item())}]
    assert all(type(v) in (int, float, str) for v in m.history[0].values())


def test_metrics_positional_names_and_rows_per_phase(dls):
    m = MetricsCB(MulticlassAccuracy())
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[m]).fit(2)
    assert [(r['epoch'], r['phase']) for r in m.history] == [(0, 'train'), (0, 'valid'), (1, 'train'), (1, 'valid')]
    assert 'MulticlassAccuracy' in m.history[0] and learn.metrics is m and m.last('train') is m.history[2]


def test_metrics_reject_non_metrics():
    with pytest.raises(TypeError, match="update/compute/reset"):
        MetricsCB(acc=lambda p, y: 0)


def test_metrics_log_function(dls):
    rows = []
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[MetricsCB(log=rows.append)]).fit(1)
    assert [r['phase'] for r in rows] == ['train', 'valid']


def test_to_device_to_cpu_nested():
    b = {'a': (torch.ones(2, dtype=torch.float16), [torch.zeros(1)]), 'n': 3}
    out = to_cpu(to_device(b, 'cpu'))
    assert out['a'][0].dtype == torch.float32 and isinstance(out['a'][1], list) and out['n'] == 3


def test_devicecb_moves_model_and_batch(dls):
    seen = []
    class Spy(Callback):
        order = 5
        def before_batch(self, learn): seen.append(learn.batch[0].device.type)
    model = nn.Linear(4, 3)
    TrainLearner(model, dls, F.cross_entropy, cbs=[DeviceCB('cpu'), Spy()]).fit(1)
    assert set(seen) == {'cpu'} and next(model.parameters()).device.type == 'cpu'


def test_single_batch_cb(dls):
    count = []
    class C(Callback):
        def before_batch(self, learn): count.append(1)
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[SingleBatchCB(), C()]).fit(3)
    assert len(count) == 1 and learn.epoch == 0


def test_batch_transform_phases(dls):
    seen = []
    class Spy(Callback):
        order = 5
        def before_batch(self, learn): seen.append((learn.training, float(learn.batch[0].abs().max())))
    tfm = lambda b: (b[0] * 0, b[1])
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[BatchTransformCB(tfm, on_valid=False), Spy()]).fit(1)
    assert all(v == 0 for t, v in seen if t) and all(v > 0 for t, v in seen if not t)


def test_set_seed_reproducible(dls):
    def run():
        set_seed(42)
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        TrainLearner(model, dls, F.cross_entropy, lr=0.1).fit(2)
        return torch.cat([p.flatten() for p in model.parameters()])
    assert torch.equal(run(), run())


def test_progress_without_a_terminal_prints_rows_not_bars_and_saves_plot(dls, tmp_path, capsys):
    cb = ProgressCB(plot=True)
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[MetricsCB(), cb], path=tmp_path).fit(2)
    out = capsys.readouterr()
    rows = out.out.splitlines()
    assert len(rows) == 4 and all(r.startswith('epoch=') for r in rows) and '\r' not in out.out and out.err == ''
    assert sum('phase=valid' in r for r in rows) == 2          # each row once: ProgressCB shows them, MetricsCB is quiet
    assert cb.figure_path == tmp_path / 'loss.png' and cb.figure_path.stat().st_size > 1000
    assert len(cb.train_losses) == 2 * len(dls.train) and len(cb.valid_losses) == 2
    # train losses recorded are the real per-batch losses
    assert all(math.isfinite(v) for v in cb.train_losses)
    assert isinstance(cb.plot_loss(), Figure)


def test_progress_plot_without_data_says_so():
    fig = ProgressCB(plot=True).plot_loss()
    assert any('nothing recorded' in t.get_text() for t in fig.axes[0].texts)


def test_batch_and_epoch_schedulers(dls):
    rec = RecorderCB(lr=get_lr)
    sched = lambda opt: lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.4, cbs=[EpochSchedCB(sched), rec]).fit(3)
    n = len(dls.train)
    assert rec.recs['lr'] == [0.4] * n + [0.2] * n + [0.1] * n
    rec2 = RecorderCB(lr=get_lr)
    learn.fit(1, lr=1.0, cbs=[BatchSchedCB(lambda opt: lr_scheduler.ExponentialLR(opt, 0.5)), rec2])
    assert rec2.recs['lr'] == pytest.approx([0.5 ** i for i in range(n)])


def test_one_cycle_over_whole_fit(dls):
    rec = RecorderCB(lr=get_lr)
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, cbs=[OneCycleCB(max_lr=1.0), rec]).fit(4)
    lrs = np.array(rec.recs['lr'])
    assert len(lrs) == 4 * len(dls.train)
    peak = lrs.argmax()
    assert lrs[peak] == pytest.approx(1.0) and lrs[0] == pytest.approx(1 / 25)
    assert np.all(np.diff(lrs[:peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) < 0)


def test_lr_find_restores_model_and_suggests(dls):
    set_seed(0)
    learn = TrainLearner(nn.Linear(4, 3), make_dls(n_train=400, bs=8), F.cross_entropy, lr=0.1)
    learn.fit(1)
    w, opt_state, epoch = learn.model.weight.clone(), learn.opt.state_dict(), learn.epoch
    res = learn.lr_find(start_lr=1e-4)
    assert torch.equal(learn.model.weight, w) and learn.epoch == epoch and learn.opt.param_groups[0]['lr'] == 0.1
    assert res.lrs[0] == pytest.approx(1e-4) and all(b == pytest.approx(a * 1.3) for a, b in zip(res.lrs, res.lrs[1:]))
    # it stopped because the loss exploded (or hit the 10-epoch limit), and the suggestion lies inside the range
    assert res.losses[-1] > 3 * min(res.losses) or not math.isfinite(res.losses[-1])
    assert res.lrs[0] / 10 <= res.suggestion <= res.lrs[-1]
    assert isinstance(plot_lr_find(res), Figure)


def test_metrics_grouped_updates_equal_per_batch_updates():
    set_seed(0)
    x, y = torch.randn(53, 4), torch.randint(0, 3, (53,))
    dls = DataLoaders(TensorLoader(x, y, bs=5), TensorLoader(x, y, bs=7))
    model = nn.Linear(4, 3)
    rows = []
    for every in (1, 3, 100):
        m = MetricsCB(accuracy=MulticlassAccuracy(), update_every=every)
        TrainLearner(model, dls, F.cross_entropy, lr=0., cbs=[m]).fit(1)
        rows.append(m.history)
    for r in rows[1:]:
        assert [row['phase'] for row in r] == ['train', 'valid']
        for a, b in zip(rows[0], r):
            assert a['accuracy'] == pytest.approx(b['accuracy']) and a['loss'] == pytest.approx(b['loss'], rel=1e-6)


def test_progress_in_a_notebook_draws_the_live_graph(dls, tmp_path, monkeypatch):
    "With fastprogress in notebook mode, rows go to the bar's table and the loss graph is updated after each phase."
    from fastprogress import fastprogress
    calls = {'graphs': [], 'rows': []}
    class FakeMaster:
        def __init__(self, gen): self.gen = gen
        def __iter__(self): return iter(self.gen)
        def write(self, line, table=False): calls['rows'].append(line)
        def update_graph(self, graphs, *a, **k): calls['graphs'].append(graphs)
    class FakeBar:
        def __init__(self, gen, leave=True, parent=None): self.gen, self.comment = gen, ''
        def __iter__(self): return iter(self.gen)
    monkeypatch.setattr(fastprogress, 'IN_NOTEBOOK', True)
    monkeypatch.setattr(fastprogress, 'master_bar', FakeMaster)
    monkeypatch.setattr(fastprogress, 'progress_bar', FakeBar)
    cb = ProgressCB(plot=True)
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[MetricsCB(), cb], path=tmp_path).fit(2)
    assert calls['rows'][0] == ['epoch', 'phase', 'loss'] and len(calls['rows']) == 1 + 4
    train_xy, valid_xy = calls['graphs'][-1]
    assert train_xy[1] == cb.train_losses and len(train_xy[0]) == 2 * len(dls.train)
    assert valid_xy[0] == [len(dls.train), 2 * len(dls.train)]
    assert cb.figure_path is None and not (tmp_path / 'loss.png').exists()   # notebooks show it live instead
