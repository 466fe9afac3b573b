"Hooks and activation statistics: numbers against direct computation, periodicity, clean-up, plots."
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from minitrain import (CNN, GeneralRelu, Callback, CallbackError, DataLoaders, SingleBatchCB, TensorLoader, TrainLearner, digits,
                       set_seed)
from minitrain.hooks import (ActivationStats, Hook, Hooks, HooksCallback, StoreModuleStats, StoreModuleStatsCB,
                             activation_stats, get_hist, get_min, lsuv_init)


def test_activation_stats_against_hand_computation():
    acts = torch.tensor([[-12., -0.1, 0.2, 0.3], [2.5, 9.99, 10., 11.]])
    (mean, std), hist = activation_stats(acts)
    assert mean.item() == pytest.approx(acts.mean().item()) and std.item() == pytest.approx(acts.std().item())
    expected = torch.zeros(40)
    for v in acts.abs().flatten().tolist():   # bins of width 0.25 over 0..10, overflow in the last bin
        expected[min(int(v / 0.25), 39)] += 1
    assert torch.equal(hist.float(), expected) and hist.sum() == 8 and hist[39] == 4
    assert activation_stats(acts, bins=5, hist_range=(0., 1.))[1].tolist() == [1, 2, 0, 0, 5]   # |a| = 0.1 | 0.2, 0.3 | - | - | 2.5, 9.99, 10, 11, 12


def test_store_module_stats_periodicity_keeps_recording():
    relu = nn.ReLU()
    with StoreModuleStats(relu, periodicity=3) as h:
        for i in range(10): relu(torch.full((4,), float(i)))
    assert h.means.tolist() == [0., 3., 6., 9.]   # batches 0, 3, 6, 9 (SlowAI records batch 0 only)


def test_hook_remove_idempotent_and_backward():
    lin = nn.Linear(3, 1)
    grads = []
    h = Hook(lin, lambda hook, m, gin, gout: grads.append(gout[0].clone()), forward=False)
    lin(torch.randn(2, 3)).sum().backward()
    assert len(grads) == 1 and torch.equal(grads[0], torch.ones(2, 1))
    h.remove(); h.remove()
    assert len(lin._backward_hooks) == 0
    with Hooks([lin, lin], lambda *a: None) as hs: assert len(lin._forward_hooks) == 2
    assert len(lin._forward_hooks) == 0 and len(hs) == 2


def n_hooks(model): return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def small():
    set_seed(0)
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 10, (48,))
    return DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:16], y[:16], bs=8))


def test_hooks_removed_after_normal_cancelled_and_failing_fit(small):
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers)
    TrainLearner(model, small, F.cross_entropy, cbs=[cb]).fit(1)
    assert n_hooks(model) == 0
    TrainLearner(model, small, F.cross_entropy, cbs=[StoreModuleStatsCB(mods=model.layers), SingleBatchCB()]).fit(1)
    assert n_hooks(model) == 0
    class Boom(Callback):
        def after_loss(self, learn): raise RuntimeError('boom')
    with pytest.raises(CallbackError):
        TrainLearner(model, small, F.cross_entropy, cbs=[StoreModuleStatsCB(mods=model.layers), Boom()]).fit(1)
    assert n_hooks(model) == 0


def test_callback_stats_equal_direct_computation(small):
    "With lr=0 the model is fixed, so each recorded batch can be recomputed by hand."
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers, periodicity=2)
    TrainLearner(model, small, F.cross_entropy, lr=0., cbs=[cb]).fit(1)
    xs = [b[0] for b in small.train]
    assert len(cb.stats) == 5 and all(len(s['mean']) == 3 for s in cb.stats)   # batches 0, 2, 4 of 6
    for j, i in enumerate((0, 2, 4)):
        a = xs[i]
        for layer, s in zip(model.layers, cb.stats):
            a = layer(a)
            assert s['mean'][j] == pytest.approx(a.mean().item(), rel=1e-5, abs=1e-6)
            assert s['std'][j] == pytest.approx(a.std().item(), rel=1e-5, abs=1e-6)
            assert s['hist'][j].sum() == a.numel()


def test_on_valid_only_and_phase_gating(small):
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers, on_train=False, on_valid=True)
    TrainLearner(model, small, F.cross_entropy, cbs=[cb]).fit(2)
    assert [len(s['mean']) for s in cb.stats] == [2 * len(small.valid)] * 5
    seen = []
    hc = HooksCallback(lambda hook, m, i, o: seen.append(m.training), mods=[model.layers[0]], on_valid=True)
    TrainLearner(model, small, F.cross_entropy, cbs=[hc]).fit(1)
    assert seen.count(True) == len(small.train) and seen.count(False) == len(small.valid)


def test_one_host_copy_per_epoch(small, monkeypatch):
    copies = []
    orig = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, 'cpu', lambda self, *a, **k: (copies.append(1), orig(self, *a, **k))[1])
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers)
    TrainLearner(model, small, F.cross_entropy, cbs=[cb]).fit(2)
    monkeypatch.undo()
    assert len(copies) == 2 and len(cb.stats[4]['mean']) == 2 * len(small.train)


def test_second_fit_keeps_first_records(small):
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers)
    learn = TrainLearner(model, small, F.cross_entropy, cbs=[cb]).fit(1)
    first = cb.stats[0]['mean'].copy()
    learn.fit(1)
    assert len(cb.stats[0]['mean']) == 2 * len(small.train) and np.array_equal(cb.stats[0]['mean'][:len(first)], first)


class TupleOut(nn.Module):
    def __init__(self): super().__init__(); self.lin = nn.Linear(64, 10)
    def forward(self, x):
        out = self.lin(x.flatten(1))
        return out, out.detach() * 0


def test_tuple_outputs_and_mod_filter(small):
    model = nn.Sequential(TupleOut())
    class Pick(nn.Module):
        def forward(self, t): return t[0]
    model.append(Pick())
    cb = ActivationStats(lambda m: isinstance(m, TupleOut))
    TrainLearner(model, small, F.cross_entropy, lr=0., cbs=[cb]).fit(1)
    x0 = next(iter(small.train))[0]
    assert len(cb) == 1 and cb.stats[0]['mean'][0] == pytest.approx(model[0](x0)[0].mean().item(), rel=1e-5)
    assert get_hist(cb.hooks[0]).shape == (40, len(small.train)) and get_min(cb.hooks[0]).shape == (len(small.train),)


def test_plots_never_drop_a_layer_and_handle_nothing_recorded(small):
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers)
    TrainLearner(model, small, F.cross_entropy, cbs=[cb]).fit(1)
    fig = cb.hist_plot()
    assert isinstance(fig, Figure) and sum(bool(a.images) for a in fig.axes) == 5
    fig = cb.mean_std_plot()
    layer_lines = lambda a: [l for l in a.lines if not l.get_label().startswith('_')]
    assert len(layer_lines(fig.axes[0])) == 5 and len(layer_lines(fig.axes[1])) == 5
    panels = [a for a in cb.dead_chart().axes if a.axison]      # a panel per layer, as miniai's dead_chart
    assert len(panels) == 5 and all(len(a.lines) == 1 for a in panels)
    empty = StoreModuleStatsCB(mods=model.layers, on_train=False)
    TrainLearner(model, small, F.cross_entropy, cbs=[empty]).fit(1)
    for fig in (empty.mean_std_plot(), empty.hist_plot(), empty.dead_chart()):
        assert any('nothing recorded' in t.get_text() for a in fig.axes for t in a.texts)
    assert isinstance(StoreModuleStatsCB().dead_chart(), Figure)   # never attached at all


def test_activation_stats_miniai_names(small):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    astats = ActivationStats(lambda m: isinstance(m, nn.ReLU))
    TrainLearner(model, small, F.cross_entropy, cbs=[astats]).fit(1)
    for f in (astats.color_dim, astats.dead_chart, astats.plot_stats): assert isinstance(f(), Figure)


def test_lsuv_init_gives_unit_variance():
    set_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(50, 10))
    xb = torch.randn(256, 20)
    mean, std = lsuv_init(model, model[1], model[0], xb, tol=1e-2)
    assert abs(mean) < 1e-2 and abs(std - 1) < 1e-2
    out = model[1](model[0](xb))
    assert out.mean().item() == pytest.approx(mean, abs=1e-5) and out.std().item() == pytest.approx(std, abs=1e-5)
    dead = nn.Sequential(nn.Linear(20, 5), nn.ReLU())
    with torch.no_grad(): dead[0].bias.fill_(-100.)
    with pytest.raises(ValueError, match="std is 0"):
        lsuv_init(dead, dead[1], dead[0], xb)


def test_module_filter_matching_nothing_warns_and_trains(small):
    "The course's ActivationStats on a model without the filtered layers trains on, with a warning (not an error)."
    model = CNN()
    before = [p.clone() for p in model.parameters()]
    cb = StoreModuleStatsCB(mod_filter=lambda m: False)
    with pytest.warns(UserWarning, match="no module to hook"):
        TrainLearner(model, small, F.cross_entropy, lr=0.1, cbs=[cb]).fit(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))   # it trained
    assert not cb.hooks


def test_the_users_example_runs_as_written(tmp_path, monkeypatch):
    "The issue's example, verbatim apart from the data (digits) and the working folder."
    from minitrain import DeviceCB, MetricsCB, MulticlassAccuracy, ProgressCB
    monkeypatch.chdir(tmp_path)
    set_seed(42)
    model = CNN()
    cb = StoreModuleStatsCB(mods=model.layers)
    learn = TrainLearner(model, digits(), F.cross_entropy, lr=0.6,
                         cbs=[MetricsCB(MulticlassAccuracy(num_classes=10)), DeviceCB(), ProgressCB(plot=True), cb]).fit()
    figs = [cb.mean_std_plot(), cb.hist_plot(), cb.dead_chart()]
    assert all(isinstance(f, Figure) for f in figs) and (tmp_path / 'loss.png').exists()
    assert len(cb.stats) == 5 and len(cb.stats[0]['mean']) == len(learn.dls.train) and n_hooks(model) == 0


class Feed(nn.Module):
    "Returns the tensor stored in `self.out` (lets a test choose a layer's activations exactly)."
    def forward(self, x): return self.out


EDGES = [0., 0.25, 0.5, 2.5, 9.75, 9.99, 10., 11., -0.25, -2.5, -12., float('inf'), -float('inf'), float('nan')]


def test_staged_stats_equal_the_definition_for_many_layers_at_once():
    "One buffer for several layers (sizes 1 to 5,000, bin edges, overflow, inf, NaN) gives activation_stats' numbers."
    g = torch.Generator().manual_seed(0)
    layers = [torch.tensor(EDGES), torch.randn(5000, generator=g) * 3, torch.relu(torch.randn(8, 3, 7, 7, generator=g)) * 4,
              torch.tensor([2.5]), torch.full((33,), 100.) + torch.randn(33, generator=g) * 1e-3]
    for bins, hist_range in ((40, (0., 10.)), (7, (0.3, 3.))):   # a power-of-two bin width and an awkward one
        mods = [Feed() for _ in layers]
        buffer = StoreModuleStatsCB(hook_kwargs={'bins': bins, 'hist_range': hist_range}).buffer
        hooks = [StoreModuleStats(m, bins=bins, hist_range=hist_range, buffer=buffer) for m in mods]
        for _ in range(3):   # three passes: the first grows the buffer, later ones compute at the end of the pass
            for m, acts in zip(mods, layers): m.out = acts; m(None)
        for h, acts in zip(hooks, layers):
            (mean, std), hist = activation_stats(acts, bins, hist_range)
            assert h.hists.shape == (3, bins)
            for row in range(3):
                assert np.array_equal(h.hists[row], hist.numpy()) and h.hists[row].sum() == acts.numel()
                np.testing.assert_allclose(h.means[row], mean.item(), rtol=1e-5, equal_nan=True)
                np.testing.assert_allclose(h.stds[row], std.item(), rtol=1e-4, equal_nan=True)
    assert activation_stats(torch.tensor(EDGES))[1][39] == 8   # 9.75 and 9.99, and 10, 11, -12, inf, -inf, NaN (beyond)
    assert activation_stats(torch.tensor([2.5]))[0].tolist() == [2.5, 0.]   # one value: std 0


def test_std_is_exact_when_the_mean_dwarfs_the_spread():
    relu = nn.ReLU()
    acts = 1000. + torch.arange(10.) * 1e-3
    with StoreModuleStats(relu) as h: relu(acts)
    assert h.stds[0] == pytest.approx(acts.double().std().item(), rel=1e-3)


def test_outputs_changed_in_place_later_are_recorded_as_they_were():
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin, nn.ReLU(inplace=True))
    x = torch.randn(16, 4)
    with torch.no_grad(): expected = lin(x)
    assert (expected < 0).any()
    with StoreModuleStats(lin) as h: model(x)
    assert h.means[0] == pytest.approx(expected.mean().item(), rel=1e-5)


def test_small_staging_limit_and_repeated_modules_give_the_same_records(monkeypatch):
    import minitrain.hooks as hooks_module
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.Tanh(), lin)   # lin runs twice per pass: two records per batch
    xs = [torch.randn(4, 8) for _ in range(3)]
    def record():
        with StoreModuleStats(lin) as h:
            for x in xs: model(x)
        h.flush()
        return h.records
    normal = record()
    monkeypatch.setattr(hooks_module, 'MAX_STAGED', 5)   # smaller than one output: computed at every call
    assert len(normal) == 6 and np.array_equal(record(), normal)


def test_a_shared_buffer_must_bin_like_the_hook():
    from minitrain.hooks import ActivationBuffer
    with pytest.raises(ValueError, match="bins 40 over"):
        StoreModuleStats(nn.ReLU(), bins=20, buffer=ActivationBuffer(40))
