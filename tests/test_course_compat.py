"Course, SlowAI and train-viz code run unchanged: each test is written the way those lessons write it."
import subprocess
import sys
import textwrap
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from minitrain import *   # the one change course code makes
from minitrain.probmaps import class_colors, make_map, plot_maps, seven_class_blobs
from conftest import make_dls


def test_star_import_gives_the_course_names_and_no_submodules():
    names = ['run_cbs', 'with_cbs', 'def_device', 'collate_device', 'inplace', 'get_grid', 'show_image', 'show_images',
             'subplots', 'append_stats', 'get_hist', 'get_min', 'plot_func', 'get_model', 'clean_mem', 'MomentumCB',
             'Learner', 'TrainLearner', 'MomentumLearner', 'TrainCB', 'MetricsCB', 'DeviceCB', 'ProgressCB',
             'SingleBatchCB', 'BatchTransformCB', 'LRFinderCB', 'lr_find', 'BatchSchedCB', 'EpochSchedCB', 'set_seed',
             'DataLoaders', 'Hook', 'Hooks', 'HooksCallback', 'ActivationStats', 'StoreModuleStatsCB', 'conv',
             'GeneralRelu', 'init_weights', 'lsuv_init', 'to_cpu', 'to_device']
    ns = {}
    exec('from minitrain import *', ns)
    assert [n for n in names if n not in ns] == []
    assert 'data' not in ns and 'learner' not in ns    # submodules would shadow the user's own names


def test_cbs_takes_one_callback_or_a_list(dls):
    learn = Learner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, cbs=TrainCB())
    learn.fit(1, cbs=SingleBatchCB())
    assert learn.train_steps == 1 and len(learn.cbs) == 1
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[MetricsCB()]).fit(1)


def test_run_cbs_and_with_cbs_as_in_the_course():
    log = []
    class A(Callback):
        order = 1
        def before_fit(self, learn): log.append('A')
    class B(Callback):
        def before_fit(self, learn): log.append('B')
    run_cbs([A(), B()], 'before_fit')
    assert log == ['B', 'A']

    class Looper:
        def __init__(self): self.seen = []
        def callback(self, nm): self.seen.append(nm)
        @with_cbs('batch')
        def one_batch(self): raise CancelBatchException()
    lp = Looper()
    lp.one_batch()
    assert lp.seen == ['before_batch', 'cleanup_batch']     # cancelled: after_batch skipped, cleanup runs


def test_course_device_and_data_helpers():
    assert def_device == default_device()
    b = collate_device([(torch.ones(2), torch.tensor(1)), (torch.zeros(2), torch.tensor(0))])
    assert b[0].shape == (2, 2) and b[0].device.type == def_device.type
    @inplace
    def transformi(b): b['image'] = [x * 2 for x in b['image']]
    assert transformi({'image': [1, 2]}) == {'image': [2, 4]}
    clean_mem()


def test_conv_and_get_model_take_false_for_none():
    assert [type(m) for m in conv(1, 8, act=False)] == [nn.Conv2d]
    assert [type(m) for m in conv(1, 8, norm=False)] == [nn.Conv2d, nn.ReLU]
    assert [type(m) for m in conv(1, 8, norm=nn.BatchNorm2d, act=GeneralRelu)][1:] == [nn.BatchNorm2d, GeneralRelu]
    model = get_model(act=partial(GeneralRelu, leak=0.1, sub=0.4), norm=nn.BatchNorm2d)
    xb, _ = next(iter(digits(bs=16).train))
    assert model(xb).shape == (16, 10) and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_get_grid_returns_an_array_with_flat(dls):
    fig, axes = get_grid(5, figsize=(11, 5))
    assert len(list(axes.flat)) == 5 and all(a.axison for a in axes.flat)
    fig, axs = subplots(1, 2)
    axs[0].plot([1, 2]); axs[1].plot([2, 1])       # miniai's subplots squeezes like plt.subplots
    fig = show_images([torch.rand(8, 8) for _ in range(5)], titles=list('abcde'))
    assert [a.get_title() for a in fig.axes if a.axison] == list('abcde')
    fig = plot_func(partial(F.leaky_relu, negative_slope=0.1))
    line = fig.axes[0].lines[0]
    assert np.allclose(line.get_ydata(), F.leaky_relu(torch.tensor(line.get_xdata()), 0.1).numpy())


def test_append_stats_hooks_carry_stats_and_match_store_module_stats():
    "The course's activations lesson: Hooks(model, append_stats), then get_grid / get_hist / get_min."
    set_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    relus = [m for m in model if isinstance(m, nn.ReLU)]
    ours = StoreModuleStatsCB(mods=relus)
    with Hooks(relus, append_stats) as hooks:
        TrainLearner(model, digits(bs=64), F.cross_entropy, lr=0.3, cbs=[ours]).fit(1, valid=False)
        fig, axes = get_grid(len(hooks), figsize=(11, 5))
        for ax, h in zip(axes.flat, hooks): show_image(get_hist(h), ax, origin='lower')
        assert all(len(h.stats) == 3 and len(h.stats[0]) == 23 for h in hooks)     # 23 training batches
        for h, o in zip(hooks, ours.hooks):
            assert torch.allclose(get_min(h), get_min(o), atol=1e-6)
            assert torch.allclose(torch.stack(h.stats[0]), torch.from_numpy(o.means), atol=1e-5)
    assert all(h.hook is None and h.handle is None for h in hooks)   # the course's name and minitrain 0.2's


def test_del_hooks_item_removes_that_hook():
    lins = [nn.Linear(2, 2), nn.Linear(2, 2)]
    hooks = Hooks(lins, append_stats)
    del hooks[0]
    assert len(hooks) == 1 and not lins[0]._forward_hooks and len(lins[1]._forward_hooks) == 1
    hooks.remove()


def test_hookscallback_takes_miniais_order_and_slowais_hook_cls(dls):
    seen = []
    hc = HooksCallback(lambda hook, m, i, o: seen.append(type(m).__name__), lambda m: isinstance(m, nn.Linear))
    TrainLearner(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), dls, F.cross_entropy, cbs=[hc]).fit(1)
    assert set(seen) == {'Linear'} and len(seen) == 2 * len(dls.train)
    model = CNN()
    cb = HooksCallback(hook_cls=StoreModuleStats, mods=model.layers)
    TrainLearner(model, digits(), F.cross_entropy, cbs=[cb, SingleBatchCB()]).fit(1)
    assert [len(h.means) for h in cb.hooks] == [1] * 5
    with pytest.raises(TypeError, match="mods="):
        HooksCallback(append_stats, model.layers)     # SlowAI's positional modules: told to name them


def test_batch_transform_on_val(dls):
    seen = []
    tfm = lambda b: (seen.append(1), b)[1]
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[BatchTransformCB(tfm, on_val=False)]).fit(1)
    assert len(seen) == len(dls.train)


def test_momentum_cb_equals_momentum_learner(dls):
    set_seed(0)
    a = MomentumLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, mom=0.85).fit(2)
    set_seed(0)
    b = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, cbs=[MomentumCB(0.85)]).fit(2)
    assert torch.equal(a.model.weight, b.model.weight) and torch.equal(a.model.bias, b.model.bias)


def test_metricscb_log_override_is_used(dls):
    "The course's W&B callback subclasses MetricsCB and overrides `_log`."
    class WandBCB(MetricsCB):
        def __init__(self, *ms, **metrics):
            super().__init__(*ms, **metrics)
            self.logged = []
        def _log(self, d): self.logged.append(d)
    cb = WandBCB(accuracy=MulticlassAccuracy())
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[cb, ProgressCB()]).fit(2)
    assert [r['phase'] for r in cb.logged] == ['train', 'valid'] * 2 and cb.logged == cb.history


def test_script_prints_metric_rows_and_saves_the_lr_finder_plot(tmp_path):
    "In a plain script, MetricsCB shows a row per phase (miniai prints them) and lr_find() draws its plot."
    script = tmp_path / 'train.py'
    script.write_text(textwrap.dedent(f"""
        import torch.nn.functional as F
        from torch import nn
        from minitrain import *
        set_seed(0)
        learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits(), F.cross_entropy, lr=0.1,
                             cbs=[MetricsCB(accuracy=MulticlassAccuracy())], path={str(tmp_path)!r})
        learn.fit(2)
        learn.lr_find()
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={'MPLBACKEND': 'Agg', 'PATH': '/usr/bin:/bin'})
    assert out.returncode == 0, out.stderr
    rows = [l for l in out.stdout.splitlines() if l.startswith('epoch=')]
    assert len(rows) == 4 and 'phase=valid' in rows[1] and 'accuracy=' in rows[1]
    assert (tmp_path / 'lr_find.png').stat().st_size > 1000


def test_callbacks_reused_by_a_new_learner_start_fresh(dls):
    model = CNN()
    cbs = [MetricsCB(), ProgressCB(plot=True), StoreModuleStatsCB(mods=model.layers)]
    small = digits(bs=256)
    TrainLearner(model, small, F.cross_entropy, lr=0.1, cbs=cbs).fit(1)
    learn = TrainLearner(model, small, F.cross_entropy, lr=0.1, cbs=cbs).fit(1)
    n = len(small.train)
    assert len(cbs[0].history) == 2 and len(cbs[1].train_losses) == n and len(cbs[2].hooks[0].records) == n
    learn.fit(1)           # the same learner again: documented to continue
    assert len(cbs[0].history) == 4 and len(cbs[1].train_losses) == 2 * n and len(cbs[2].hooks[0].records) == 2 * n


def test_fashion_mnist_without_a_path_names_the_folder(monkeypatch, tmp_path):
    import minitrain.datasets
    monkeypatch.setattr(minitrain.datasets, 'FASHION_DEFAULT', tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match="nowhere.*never downloads"):
        fashion_mnist()


def blob_maps(n_epochs=3, map_type='boundary'):
    "train-viz's example loop: train, then make_map every epoch."
    torch.manual_seed(0)
    x, y = seven_class_blobs(n_per_class=20)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 7))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    maps = []
    for epoch in range(n_epochs):
        for i in range(0, len(x), 32):
            loss = F.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad(); loss.backward(); opt.step()
        maps.append(make_map(model, (-3, 15), (-5, 14), map_type, axial_gradation=0.5, epoch_num=epoch, epoch_freq=1))
    return maps


def test_make_map_behaves_as_the_array_train_viz_returned(tmp_path):
    maps = blob_maps()
    pm = maps[-1]
    assert pm.shape == (39, 37) and pm.max() <= 1 and pm.min() >= 1 / 7 and pm[0, :3].shape == (3,)
    img = plt.imshow(pm)
    assert img.get_array().shape == (39, 37)
    stacked = np.asarray(maps)
    assert stacked.shape == (3, 39, 37) and np.array_equal(stacked[1], maps[1].confidence)
    assert pm.epoch == 2 and make_map(nn.Linear(2, 3), (0, 1), (0, 1), epoch_num=0).epoch == 0


def test_plot_maps_takes_plain_arrays_and_writer_kwargs(tmp_path):
    maps = np.asarray(blob_maps())                 # train-viz users hand over arrays
    anim = plot_maps(maps, tmp_path / 'a.gif', interpolation_factor=2, fps=5)
    gif = Image.open(tmp_path / 'a.gif')
    assert gif.n_frames == 5 and gif.info['duration'] == 200
    assert anim._interval == 10                    # train-viz's default frame interval
    anim = plot_maps(blob_maps(), tmp_path / 'b.gif')
    assert Image.open(tmp_path / 'b.gif').info['duration'] == 20     # 10 ms asked: browsers play GIFs at 20 ms at most


def test_gif_frames_keep_the_class_colours(tmp_path):
    maps = blob_maps(4, 'region')
    plot_maps(maps, tmp_path / 'r.gif', interpolation_factor=2)
    want = [tuple(int(round(255 * v)) for v in c) for c in class_colors(7)]
    gif = Image.open(tmp_path / 'r.gif')
    for i in range(gif.n_frames):
        gif.seek(i)
        colours = set(np.asarray(gif.convert('RGB')).reshape(-1, 3).view([('', np.uint8)] * 3).ravel().tolist())
        assert all(w in colours for w in want), f"frame {i} lost class colours (legend) to its own palette"


def test_probmap_callback_reused_by_a_new_learner_starts_a_new_film():
    from minitrain.probmaps import ProbMapCB
    x, y = seven_class_blobs(n_per_class=10)
    dls = DataLoaders(TensorLoader(x, y, bs=16, shuffle=True), TensorLoader(x, y, bs=64))
    cb = ProbMapCB(resolution=20)
    net = lambda: nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 7))
    TrainLearner(net(), dls, F.cross_entropy, lr=0.05, cbs=[cb]).fit(3)
    assert len(cb.snapshots) == 4
    learn = TrainLearner(net(), dls, F.cross_entropy, lr=0.05, cbs=[cb]).fit(2)
    assert len(cb.snapshots) == 3
    learn.fit(1)
    assert len(cb.snapshots) == 4


def test_names_that_moved_in_0_3_still_import_from_their_old_modules():
    "minitrain 0.2's public names, from the modules 0.2 had them in (each now lives where its idea is)."
    import importlib
    moved = {'minitrain.data': ['FASHION_FILES', 'FASHION_CLASSES', 'FASHION_DEFAULT', 'read_idx', 'fashion_mnist'],
             'minitrain.events': ['model_device'], 'minitrain.distributed': ['AccelerateCB'],
             'minitrain.callbacks': ['set_seed', 'MetricsCB', 'DeviceCB', 'Mean', 'MulticlassAccuracy', 'to_device', 'to_cpu',
                                     'def_device', 'collate_device', 'clean_mem', 'default_device'],
             'minitrain.dynamics': ['RunFolder', 'TrainingDynamicsCB', 'load_runs'],
             'minitrain.hmm_html': ['PAGE_STYLE', 'TOOLTIP_SCRIPT'], 'minitrain.experiment': ['OPTIMIZERS', 'Workload'],
             'minitrain.cli': ['logger', 'cmd_demo', 'cmd_train', 'cmd_analyze'], 'minitrain.report': ['logger']}
    for module, names in moved.items():
        m = importlib.import_module(module)
        for n in names: assert getattr(m, n) is not None, (module, n)
    import minitrain.data
    with pytest.raises(AttributeError, match="has no attribute 'fashion_mnit'"): minitrain.data.fashion_mnit
    from minitrain.datasets import fashion_mnist
    assert minitrain.data.fashion_mnist is fashion_mnist
