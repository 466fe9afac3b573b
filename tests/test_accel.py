"""Fast where users train: mixed precision, gradient clipping and accumulation (against hand-written loops), compile,
channels-last, pinned memory, and no host sync per batch. Everything here runs on the CPU (bf16 and fp16 autocast,
GradScaler and torch.compile all work there); the sync-debug test needs CUDA."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from minitrain import (CancelFitException, Callback, DataLoaders, DeviceCB, Learner, MetricsCB, MomentumLearner, MulticlassAccuracy, ProgressCB,
                       TensorLoader, TrainCB, TrainLearner, set_seed)
from minitrain.accel import ChannelsLastCB, CompileCB, MixedPrecision, MixedPrecisionCB, NarrowConvsInFloat32, compile_problem
from minitrain.callbacks import GradientAccumulationCB, GradientClipCB
from minitrain.hooks import StoreModuleStatsCB


def data(n=96, bs=16, n_in=6, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    y = (x @ torch.randn(n_in, classes, generator=g)).argmax(1)
    return x, y, DataLoaders(TensorLoader(x, y, bs=bs), TensorLoader(x[:32], y[:32], bs=bs))


def mlp(seed=0, n_in=6):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, 32), nn.ReLU(), nn.Linear(32, 3))


class Spy(Callback):
    "Records what the model computed in and the weights' dtype, once per fit."
    order = 10
    def before_fit(self, learn): self.pred_dtypes, self.loss_dtypes = set(), set()
    def after_predict(self, learn): self.pred_dtypes.add(learn.preds.dtype)
    def after_loss(self, learn): self.loss_dtypes.add(learn.loss.dtype)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mixed_precision_computes_in_half_and_keeps_float32_weights(dtype):
    x, y, dls = data()
    spy = Spy()
    learn = TrainLearner(mlp(), dls, F.cross_entropy, lr=0.1, cbs=[MixedPrecisionCB(dtype), spy, MetricsCB()])
    before = learn.model[0].weight.clone()
    learn.fit(2)
    assert spy.pred_dtypes == {dtype} and all(p.dtype == torch.float32 for p in learn.model.parameters())
    assert not torch.equal(before, learn.model[0].weight)
    hist = learn.metrics.history
    assert hist[-1]['loss'] < hist[0]['loss']                                # it learns
    assert (learn.scaler is None)                                             # only during the fit
    cb = learn.cbs[0]
    assert (cb.scaler is not None) == (dtype == torch.float16)               # a GradScaler for float16 only


@pytest.mark.parametrize('compiled', [False, True])
def test_bfloat16_on_the_cpu_gives_a_cnn_the_gradients_of_float32(compiled):
    "CNN() on 8x8 digits has stride-2 convolutions on 1-pixel-wide maps, whose CPU bf16 weight gradient torch gets wrong."
    from minitrain import CNN, digits
    class Grads(Callback):
        order = 10
        def before_step(self, learn):
            self.grads = [p.grad.clone() for p in learn.model.parameters() if p.ndim > 1]
            raise CancelFitException()
    xb, yb = next(iter(digits(bs=64).train))
    grads = {}
    fast = [MixedPrecisionCB(torch.bfloat16)] + ([CompileCB(backend='eager')] if compiled else [])
    for name, cbs in (('float32', []), ('bfloat16', fast)):
        torch.manual_seed(0)
        g = Grads()
        TrainLearner(CNN(), DataLoaders(TensorLoader(xb, yb, bs=64), TensorLoader(xb, yb, bs=64)), F.cross_entropy, lr=0.1,
                     cbs=[*cbs, g]).fit(1)
        grads[name] = g.grads
    assert len(grads['bfloat16']) == 5
    for ours, exact in zip(grads['bfloat16'], grads['float32']):
        assert torch.isfinite(ours).all() and (ours - exact).norm() < 0.2 * exact.norm()   # bf16 rounding: <= 0.07
    model = CNN()
    TrainLearner(model, DataLoaders(TensorLoader(xb, yb, bs=64), TensorLoader(xb, yb, bs=64)), F.cross_entropy, lr=0.1,
                 cbs=[MixedPrecisionCB(torch.bfloat16)]).fit(1)
    assert not any('forward' in vars(m) for m in model.modules())                  # the convolutions are plain again
    guard = NarrowConvsInFloat32(model)
    twin = copy.deepcopy(model)                                   # a probability map's snapshot: its own switch
    assert twin.layers[4].forward.conv is twin.layers[4] and model.layers[4].forward.conv is model.layers[4]
    guard.remove()


def test_course_code_with_mixed_precision_in_cbs_runs_unchanged():
    "miniai's lesson: `Learner(model, dls, loss, lr, cbs=[DeviceCB(), MixedPrecision()])` (a plain Learner: steps from the cb)."
    x, y, dls = data()
    learn = Learner(mlp(), dls, F.cross_entropy, lr=0.1, cbs=[DeviceCB(), MixedPrecision(), MetricsCB(accuracy=MulticlassAccuracy())])
    learn.fit(1)
    assert learn.metrics.history[-1]['accuracy'] > 0


def test_the_float16_scaler_state_is_saved_and_loaded(tmp_path):
    x, y, dls = data()
    mp = MixedPrecisionCB(torch.float16, init_scale=1024., growth_interval=3)
    learn = TrainLearner(mlp(), dls, F.cross_entropy, lr=0.1, cbs=[mp]).fit(2)
    scale = mp.scaler.get_scale()
    assert scale > 1024.                                                    # grew every 3 good steps
    learn.save(tmp_path / 'mp.pt')
    fresh = MixedPrecisionCB(torch.float16)
    other = TrainLearner(mlp(1), dls, F.cross_entropy, lr=0.1, cbs=[fresh])
    other.load(tmp_path / 'mp.pt')
    other.fit(1, lr=0.0)
    assert fresh.scaler.state_dict()['growth_interval'] == 3 and fresh.scaler.get_scale() >= scale


def test_an_overflowing_float16_step_is_skipped_not_reported_as_a_nonfinite_loss():
    x, y, dls = data()
    class Overflow(Callback):
        order = 5
        def after_backward(self, learn):
            if learn.iter == 2: learn.model[0].weight.grad.fill_(float('inf'))
        def after_step(self, learn):
            if learn.iter == 1: self.before = learn.model[0].weight.clone()
            if learn.iter == 2: self.after = learn.model[0].weight.clone()
    spy = Overflow()
    mp = MixedPrecisionCB(torch.float16, init_scale=256.)
    TrainLearner(mlp(), dls, F.cross_entropy, lr=0.1, cbs=[mp, spy]).fit(1, valid=False)
    assert torch.equal(spy.before, spy.after)                              # the step of batch 2 was skipped
    assert mp.scaler.get_scale() == 128.                                   # and the scale halved; no error raised


def hand_loop(model, x, y, bs, lr, epochs, n_acc=1, clip=None, dtype=None, scaler=None):
    "The loop a user writes by hand: autocast, loss / n_acc, accumulate, unscale, clip, step."
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n_batches = (len(x) + bs - 1) // bs
    for _ in range(epochs):
        for i in range(n_batches):
            xb, yb = x[i * bs:(i + 1) * bs], y[i * bs:(i + 1) * bs]
            with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(xb), yb) / n_acc
            (loss if scaler is None else scaler.scale(loss)).backward()
            last = i == n_batches - 1
            if (i + 1) % n_acc and not last: continue
            group = (i % n_acc) + 1
            if scaler is not None: scaler.unscale_(opt)
            if group < n_acc:
                for p in model.parameters(): p.grad.mul_(n_acc / group)
            if clip is not None: nn.utils.clip_grad_norm_(model.parameters(), clip)
            if scaler is None: opt.step()
            else: scaler.step(opt); scaler.update()
            opt.zero_grad()
    return model


@pytest.mark.parametrize('dtype', [None, torch.bfloat16, torch.float16])
def test_accumulation_and_clipping_match_a_hand_written_loop(dtype):
    x, y, dls = data(n=88, bs=8)                                         # 11 batches: the last group of 3 is short
    cbs = [GradientAccumulationCB(4), GradientClipCB(0.05)]
    if dtype is not None: cbs.append(MixedPrecisionCB(dtype, init_scale=2. ** 10) if dtype == torch.float16 else MixedPrecisionCB(dtype))
    ours = TrainLearner(mlp(), dls, F.cross_entropy, lr=0.5, cbs=cbs).fit(2, valid=False).model
    scaler = torch.amp.GradScaler('cpu', init_scale=2. ** 10) if dtype == torch.float16 else None
    theirs = hand_loop(mlp(), x, y, 8, 0.5, 2, n_acc=4, clip=0.05, dtype=dtype, scaler=scaler)
    for a, b in zip(ours.parameters(), theirs.parameters()): torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert cbs[1].last_norm is not None                                  # clipping saw a norm (unscaled: < 1e3)
    assert float(cbs[1].last_norm) < 1e3


def test_accumulation_steps_once_per_group_and_metrics_see_the_batch_loss():
    x, y, dls = data(n=96, bs=16)                                        # 6 batches, groups of 3: 2 steps an epoch
    steps = []
    class Count(Callback):
        def after_step(self, learn): steps.append(learn.iter)
    learn = TrainLearner(mlp(), dls, F.cross_entropy, lr=0.1, cbs=[GradientAccumulationCB(3), Count(), MetricsCB()]).fit(1)
    assert steps == [2, 5] and learn.train_steps == 2
    plain = TrainLearner(mlp(), dls, F.cross_entropy, lr=0.0, cbs=[MetricsCB()]).fit(1)
    zero = TrainLearner(mlp(), dls, F.cross_entropy, lr=0.0, cbs=[GradientAccumulationCB(3), MetricsCB()]).fit(1)
    assert zero.metrics.history[0]['loss'] == pytest.approx(plain.metrics.history[0]['loss'])   # not divided by 3


def test_momentum_learner_with_float16_matches_float32_steps():
    x, y, dls = data()
    a = MomentumLearner(mlp(), dls, F.cross_entropy, lr=0.05, mom=0.8).fit(1, valid=False).model
    b = MomentumLearner(mlp(), dls, F.cross_entropy, lr=0.05, mom=0.8, cbs=[MixedPrecisionCB(torch.float16)]).fit(1, valid=False).model
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q, rtol=0.02, atol=2e-3)


def test_gradient_metrics_of_training_dynamics_see_unscaled_float32_gradients(tmp_path):
    from minitrain.dynamics_cb import TrainingDynamicsCB
    x, y, dls = data()
    rows = []
    for cbs in ([], [MixedPrecisionCB(torch.float16, init_scale=2. ** 12)]):
        cb = TrainingDynamicsCB(every=1)
        TrainLearner(mlp(), dls, F.cross_entropy, lr=0.1, cbs=[*cbs, cb]).fit(1)
        rows.append(cb.dataframe().iloc[-1])
    assert rows[1]['grad_l2'] == pytest.approx(rows[0]['grad_l2'], rel=0.05)   # not 4096 times larger
    assert rows[1]['l2'] == pytest.approx(rows[0]['l2'], rel=1e-3)


# compile, channels-last --------------------------------------------------------------------------------------------

def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def image_dls(n=48, bs=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long()
    return DataLoaders(TensorLoader(x, y, bs=bs), TensorLoader(x[:16], y[:16], bs=bs))


def test_compiled_training_records_the_same_activation_statistics_and_saves_plain_names(tmp_path):
    stats, models = [], []
    for compiled in (False, True):
        model = conv_net()
        cb = StoreModuleStatsCB(mods=[model[1], model[3]])
        class SaveInside(Callback):
            def after_epoch(self, learn):
                if not learn.training: learn.save(tmp_path / f'inside{compiled}.pt')
        cbs = [cb, SaveInside()] + ([CompileCB(backend='eager')] if compiled else [])
        learn = TrainLearner(model, image_dls(), F.cross_entropy, lr=0.1, cbs=cbs).fit(1)
        stats.append([h.means for h in cb.hooks]); models.append(learn.model)
    assert all(len(s) == 3 for s in stats[1])                               # the hooks fired on the compiled model
    for a, b in zip(stats[0], stats[1]): torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-4, atol=1e-5)
    assert models[1] is not None and not hasattr(models[1], '_orig_mod')    # the plain model is back after the fit
    saved = torch.load(tmp_path / 'insideTrue.pt', weights_only=True)['model']
    assert not any(k.startswith('_orig_mod') for k in saved) and set(saved) == set(models[0].state_dict())


def test_compile_says_why_it_cannot_run(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, 'which', lambda name: None)
    monkeypatch.delenv('CXX', raising=False)
    assert 'C++ compiler' in compile_problem(None, 'cpu') and compile_problem('eager', 'cpu') is None
    with pytest.raises(Exception, match=r"CompileCB: .*C\+\+ compiler.*backend='eager'"):
        TrainLearner(conv_net(), image_dls(), F.cross_entropy, lr=0.1, cbs=[CompileCB()]).fit(1)


def test_channels_last_trains_as_the_default_layout():
    seen = []
    class Layout(Callback):
        order = 10
        def after_predict(self, learn): seen.append(learn.batch[0].is_contiguous(memory_format=torch.channels_last))
    a = TrainLearner(conv_net(), image_dls(), F.cross_entropy, lr=0.1).fit(1).model
    b = TrainLearner(conv_net(), image_dls(), F.cross_entropy, lr=0.1, cbs=[ChannelsLastCB(), Layout()]).fit(1).model
    assert seen and all(seen)
    assert b[0].weight.is_contiguous()                                        # back to the default after the fit
    for p, q in zip(a.parameters(), b.parameters()): torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


# data on the device ------------------------------------------------------------------------------------------------

def test_pin_memory_without_a_gpu_warns_and_gives_the_same_batches():
    x = torch.arange(20.).view(10, 2)
    with pytest.warns(UserWarning, match='no GPU'):
        pinned = TensorLoader(x, bs=4, pin_memory=True)
    assert [b[0].tolist() for b in pinned] == [b[0].tolist() for b in TensorLoader(x, bs=4)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='pinned memory needs a GPU')
def test_pinned_batches_copy_without_blocking():
    x = torch.randn(64, 3)
    batches = list(TensorLoader(x, bs=16, pin_memory=True))
    assert all(b[0].is_pinned() for b in batches)


def test_a_loader_shuffles_with_an_index_on_its_tensors_device(monkeypatch):
    devices = []
    real = torch.randperm
    def spy(n, *args, **kwargs):
        devices.append(torch.device(kwargs.get('device', 'cpu')))
        return real(n, *args, **kwargs)
    monkeypatch.setattr(torch, 'randperm', spy)
    x = torch.randn(12, 2, device='meta' if False else 'cpu')
    list(TensorLoader(x, bs=4, shuffle=True))
    assert devices == [x.device]


# host syncs --------------------------------------------------------------------------------------------------------

class CountSyncs(TorchFunctionMode):
    "Counts the calls that make the host wait for the device."
    NAMES = {'item', 'cpu', 'tolist', '__bool__', '__float__', '__int__', 'numpy'}
    def __init__(self): super().__init__(); self.calls = []
    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in self.NAMES: self.calls.append(name)
        return func(*args, **(kwargs or {}))


class PrintsLoss(Callback):
    "What the counter must catch: a callback that reads the loss on the host every batch."
    def after_batch(self, learn): self.last = learn.loss.item()


def syncs_of_a_fit(n_batches, extra=()):
    x, y, _ = data(n=16 * n_batches, bs=16)
    dls = DataLoaders(TensorLoader(x, y, bs=16, shuffle=True), TensorLoader(x, y, bs=16))
    model = mlp()
    cbs = [DeviceCB(), MetricsCB(accuracy=MulticlassAccuracy(), log=False), ProgressCB(plot=False),
           StoreModuleStatsCB(mods=[model[0], model[2]]), GradientClipCB(10.), *extra]
    learn = TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=cbs)
    with CountSyncs() as counter: learn.fit(1)
    return len(counter.calls)


def test_host_syncs_do_not_grow_with_the_number_of_batches():
    few, many = syncs_of_a_fit(4), syncs_of_a_fit(24)
    assert few == many, (few, many)        # none per batch: the same count for 4 batches or 24
    assert many < 60                       # a few per phase (metric rows, statistics flushed at the epoch end)
    assert syncs_of_a_fit(24, [PrintsLoss()]) == many + 2 * 24    # the counter sees a per-batch .item() (train + valid)


def test_training_dynamics_syncs_only_at_its_checkpoints():
    from minitrain.dynamics_cb import TrainingDynamicsCB
    assert syncs_of_a_fit(4, [TrainingDynamicsCB(every=1)]) == syncs_of_a_fit(24, [TrainingDynamicsCB(every=1)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA: sync debug mode checks GPU-to-host waits')
def test_a_cuda_fit_makes_no_host_sync_inside_the_batch_loop():
    x, y, _ = data(n=128, bs=16)
    dls = DataLoaders(TensorLoader(x.cuda(), y.cuda(), bs=16, shuffle=True), TensorLoader(x.cuda(), y.cuda(), bs=16))
    class SyncDebugInBatches(Callback):
        order = -100
        def before_batch(self, learn): torch.cuda.set_sync_debug_mode('error')
        def after_batch(self, learn): torch.cuda.set_sync_debug_mode('default')
        def cleanup_fit(self, learn): torch.cuda.set_sync_debug_mode('default')
    model = mlp()
    cbs = [SyncDebugInBatches(), DeviceCB(), MetricsCB(accuracy=MulticlassAccuracy(), log=False), ProgressCB(plot=False),
           StoreModuleStatsCB(mods=[model[0], model[2]])]
    TrainLearner(model, dls, F.cross_entropy, lr=0.1, cbs=cbs).fit(2)
