"""The rest of the course: code written the way course22p2's lessons 09-15, SlowAI's notebooks 09-11, train-viz and
the original analysis scripts write it runs with only the import changed, and gives the course's numbers."""
import gzip
import logging
import struct
import warnings
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from minitrain import *   # the course's way: one star import
from minitrain.hooks import ActivationStats
from minitrain.schedulers import LRFinderCB


def course_dls(bs=64):
    return digits(bs=bs)


# 1. subclasses that store their own arguments (fastcore's store_attr), without super().__init__ ------------------

def store_attr(obj, **kwargs):
    "What `fc.store_attr()` does in these __init__s: every argument becomes an attribute of the same name."
    for k, v in kwargs.items(): setattr(obj, k, v)


def test_slowai_normalize_batch_cb_stores_its_own_arguments():
    class NormalizeBatchCB(BatchTransformCB):
        def __init__(self, on_train=True, on_val=True): store_attr(self, on_train=on_train, on_val=on_val)
        def tfm(self, batch):
            xb, yb = batch
            return xb + 10., yb
    seen = []
    class Look(Callback):
        order = 1
        def before_batch(self, learn): seen.append((learn.model.training, float(learn.batch[0].mean())))
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), course_dls(), F.cross_entropy, lr=0.1,
                         cbs=[NormalizeBatchCB(on_val=False), Look()])
    learn.fit(1)
    train = [m for t, m in seen if t]
    valid = [m for t, m in seen if not t]
    assert min(train) > 9. and max(valid) < 1.     # transformed in training only, as on_val=False asks


def test_slowai_lsuv_style_hooks_callback_without_super_init():
    class MeanHook(Hook):                            # SlowAI's hooks are Hook subclasses that bring their function
        def __init__(self, m):
            self.means = []
            super().__init__(m, self.record)
        def record(self, hook, mod, inp, outp): self.means.append(outp.mean().item())
    class LSUVInitialization(HooksCallback):
        def __init__(self, mods=None, mod_filter=None, on_train=True, on_val=False, hook_cls=MeanHook):
            store_attr(self, mods=mods, mod_filter=mod_filter, on_train=on_train, on_val=on_val, hook_cls=hook_cls)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    cb = LSUVInitialization(mod_filter=lambda m: isinstance(m, nn.ReLU))
    TrainLearner(model, course_dls(), F.cross_entropy, lr=0.1, cbs=[cb]).fit(1)
    assert len(cb.hooks) == 1 and len(cb.hooks[0].means) == len(course_dls().train)   # training batches only
    both = LSUVInitialization(mod_filter=lambda m: isinstance(m, nn.ReLU), on_val=True)
    TrainLearner(model, course_dls(), F.cross_entropy, lr=0.1, cbs=[both]).fit(1)
    assert len(both.hooks[0].means) == len(course_dls().train) + len(course_dls().valid)   # on_val=True: both phases


# 2. the course silences logging; the rows still show ---------------------------------------------------------

def test_metric_rows_print_although_the_lesson_disabled_logging(capsys):
    logging.disable(logging.WARNING)       # the first cell of lessons 09-14
    try:
        TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), course_dls(), F.cross_entropy, lr=0.1,
                     cbs=[MetricsCB(accuracy=MulticlassAccuracy())]).fit(2)
    finally: logging.disable(logging.NOTSET)
    rows = [l for l in capsys.readouterr().out.splitlines() if 'accuracy=' in l]
    assert len(rows) == 4 and rows[0].startswith('epoch=0  phase=train')
    TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), course_dls(), F.cross_entropy, lr=0.1,
                 cbs=[MetricsCB(accuracy=MulticlassAccuracy(), log=False)]).fit(1)
    assert 'accuracy=' not in capsys.readouterr().out       # asked to be quiet


# 3. RecorderCB calls its functions with the callback ---------------------------------------------------------

def test_recorder_functions_take_the_callback_as_in_lesson_12():
    def _lr(cb): return cb.pg['lr']
    def _beta1(cb): return cb.pg['betas'][0]
    rec = RecorderCB(lr=_lr, mom=_beta1)
    sched = partial(optim.lr_scheduler.OneCycleLR, max_lr=0.01, total_steps=len(course_dls().train) * 2)
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), course_dls(), F.cross_entropy, lr=0.01,
                         cbs=[rec, BatchSchedCB(sched)], opt_func=optim.AdamW)
    learn.fit(2)
    assert len(rec.recs['lr']) == 2 * len(course_dls().train)
    assert max(rec.recs['lr']) == pytest.approx(0.01, rel=1e-3) and rec.recs['mom'][0] > rec.recs['mom'][len(rec.recs['mom']) // 3]


# 4. ActivationStats with a filter that matches nothing -------------------------------------------------------

def test_activation_stats_of_a_filter_matching_nothing_warns_and_trains():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))   # no GeneralRelu in it
    astats = ActivationStats(lambda m: isinstance(m, GeneralRelu))                        # fc.risinstance(GeneralRelu)
    learn = TrainLearner(model, course_dls(), F.cross_entropy, lr=0.2, cbs=[astats, MetricsCB(log=False)])
    with pytest.warns(UserWarning, match='no module to hook'): learn.fit(2)
    assert learn.metrics.history[-1]['loss'] < learn.metrics.history[0]['loss']


# 5. SlowAI's fashion_mnist(64) --------------------------------------------------------------------------------

def write_idx(path, array):
    "An IDX file as MNIST's are written: magic (ubyte, n dims), the sizes big-endian, the bytes; gzipped."
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
    with gzip.open(path, 'wb') as f: f.write(header + array.tobytes())


def tiny_fashion(folder, n_train=96, n_valid=32):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (('train', n_train), ('t10k', n_valid)):
        write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz', rng.integers(0, 10, n))
    return folder


def test_fashion_mnist_takes_slowais_batch_size_first(tmp_path, monkeypatch):
    import minitrain.datasets
    monkeypatch.setattr(minitrain.datasets, 'FASHION_DEFAULT', tiny_fashion(tmp_path / 'fashion'))
    dls = fashion_mnist(64)
    xb, yb = next(iter(dls.train))
    assert xb.shape == (64, 1, 28, 28) and xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1
    assert fashion_mnist(tmp_path / 'fashion', bs=16).train.bs == 16        # minitrain's order still works


# 6. lesson 09's own learners with minitrain's callbacks --------------------------------------------------------

class StepByStepLearner:
    "A learner written the way lesson 09 builds one: its own loop, minitrain's callbacks; no `training`, no `path`."
    def __init__(self, model, dls, loss_func, lr, cbs, opt_func=optim.SGD):
        self.model, self.dls, self.loss_func, self.lr, self.cbs, self.opt_func = model, dls, loss_func, lr, list(cbs), opt_func
    def callback(self, name): run_cbs(self.cbs, name, self)
    @with_cbs('batch')
    def _one_batch(self):
        self.callback('predict'); self.callback('after_predict')
        self.callback('get_loss'); self.callback('after_loss')
        if self.model.training:
            self.callback('backward'); self.callback('after_backward')
            self.callback('step'); self.callback('after_step')
            self.callback('zero_grad')
    @with_cbs('epoch')
    def _one_epoch(self):
        for self.iter, self.batch in enumerate(self.dl): self._one_batch()
    def one_epoch(self, train):
        self.model.train(train)
        self.dl = self.dls.train if train else self.dls.valid
        self._one_epoch()
    @with_cbs('fit')
    def _fit(self):
        for self.epoch in self.epochs:
            self.one_epoch(True)
            with torch.no_grad(): self.one_epoch(False)
    def fit(self, n_epochs, cbs=()):
        self.cbs += list(cbs)
        try:
            self.n_epochs, self.epochs = n_epochs, range(n_epochs)
            self.opt = self.opt_func(self.model.parameters(), self.lr)
            self._fit()
        finally:
            for cb in cbs: self.cbs.remove(cb)


def test_lesson_09_learners_run_minitrains_callbacks(capsys):
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    stats = StoreModuleStatsCB(mods=[model[2]])
    learn = StepByStepLearner(model, course_dls(), F.cross_entropy, 0.2,
                              [TrainCB(), DeviceCB(), metrics, ProgressCB(plot=True), stats])
    learn.fit(2)
    assert [r['phase'] for r in metrics.history] == ['train', 'valid'] * 2
    assert metrics.history[-1]['accuracy'] > 0.8 and len(stats.hooks[0].means) == 2 * len(course_dls().train)
    learn.fit(3, cbs=[LRFinderCB()])                      # the course's way to run the finder, drawn at the end
    from pathlib import Path
    assert Path('lr_find.png').stat().st_size > 5000     # the script's working folder (this test's tmp folder)


# 7. names from the later lessons -----------------------------------------------------------------------------

def lesson_13_model(act=act_gr, nfs=(8, 16, 32, 64, 128, 256), norm=nn.BatchNorm2d):
    layers = [ResBlock(1, 8, stride=1, act=act, norm=norm)]
    layers += [ResBlock(nfs[i], nfs[i + 1], act=act, norm=norm, stride=2) for i in range(len(nfs) - 1)]
    layers += [nn.Flatten(), nn.Linear(nfs[-1], 10, bias=False), nn.BatchNorm1d(10)]
    return nn.Sequential(*layers)


def test_lesson_13s_resnet_has_the_courses_parameter_count_and_summary():
    model = lesson_13_model()
    assert sum(p.numel() for p in model.parameters()) == 1_228_908            # the course's printed total
    xb = torch.randn(16, 1, 28, 28)
    rows = summarize(model, 'ResBlock', xb=xb)                               # SlowAI's regex on class names
    assert len(rows) == 6 and rows[-1][2] == (16, 256, 1, 1) and 'Total parameters' in repr(rows)
    act = act_gr()
    assert isinstance(act, GeneralRelu) and act(torch.tensor([-1., 1.])).tolist() == pytest.approx([-0.5, 0.6])


def test_show_image_batch_and_capture_preds_as_lesson_14_calls_them():
    set_seed(1)
    learn = TrainLearner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), course_dls(), F.cross_entropy, lr=0.5,
                         cbs=[MetricsCB(accuracy=MulticlassAccuracy(), log=False)]).fit(1)
    before = [p.clone() for p in learn.model.parameters()]
    fig = learn.show_image_batch(max_n=9, imsize=1)
    assert len([a for a in fig.axes if a.get_images()]) == 9
    preds, targs, inps = learn.capture_preds(inps=True)
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters())) and learn.epoch == 1
    n = len(learn.dls.valid.tensors[0])
    assert preds.shape == (n, 10) and targs.shape == (n,) and inps.shape[0] == n
    acc = (preds.argmax(1) == targs).float().mean().item()
    assert acc == pytest.approx(learn.metrics.last('valid')['accuracy'], abs=1e-6)   # the same validation pass
    cp = CapturePreds()
    learn.fit(1, train=False, cbs=[cp])
    assert torch.equal(cp.all_preds, cp.preds) and torch.equal(cp.all_targs, targs)   # the course's attribute names


def test_the_courses_accelerate_cb_takes_n_inp():
    pytest.importorskip('accelerate', reason="optional: pip install 'minitrain[accelerate]'")
    from minitrain.accel import AccelerateCB
    cb = AccelerateCB(n_inp=1, mixed_precision='no', cpu=True)
    learn = Learner(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), course_dls(), F.cross_entropy, lr=0.1,
                    cbs=[cb, MetricsCB(log=False)])            # a plain Learner: the steps come from the TrainCB subclass
    learn.fit(1)
    assert learn.metrics.history[-1]['loss'] < 2.3


# 8. the course's numbers ----------------------------------------------------------------------------------------

def test_init_weights_initialises_convolutions_only_as_the_course_does():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    lin_w, lin_b, conv_b = model[3].weight.clone(), model[3].bias.clone(), model[0].bias.clone()
    model.apply(partial(init_weights, leaky=0.1))
    assert torch.equal(lin_w, model[3].weight) and torch.equal(lin_b, model[3].bias) and torch.equal(conv_b, model[0].bias)
    assert model[0].weight.std().item() == pytest.approx((2 / (1.01 * 9)) ** 0.5, rel=0.25)   # kaiming, leaky 0.1


def test_conv_keeps_its_bias_before_a_norm_layer_like_the_courses():
    c = conv(3, 8, norm=nn.BatchNorm2d)
    assert c[0].bias is not None and sum(p.numel() for p in c.parameters()) == 3 * 8 * 9 + 8 + 2 * 8
    assert conv(3, 8, norm=nn.BatchNorm2d, bias=False)[0].bias is None


# 9. in a notebook ---------------------------------------------------------------------------------------------

def test_plots_under_the_courses_constrained_layout_give_no_warning_and_lr_find_a_short_repr():
    import matplotlib as mpl
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), GeneralRelu(leak=0.1, sub=0.4), nn.Linear(32, 10))
    astats = ActivationStats(lambda m: isinstance(m, GeneralRelu))
    learn = TrainLearner(model, course_dls(), F.cross_entropy, lr=0.2, cbs=[astats]).fit(1)
    with mpl.rc_context({'figure.constrained_layout.use': True}), warnings.catch_warnings():
        warnings.simplefilter('error')                     # "The figure layout has changed to tight" would fail here
        for fig in (astats.color_dim(), astats.plot_stats(), astats.dead_chart()): assert fig.axes
    res = learn.lr_find()
    assert len(repr(res)) < 120 and 'suggestion=' in repr(res)


def test_a_figure_shows_once_per_cell(monkeypatch):
    "IPython shows a cell's value and pyplot its open figures: a ShownOnce figure displays the first time only."
    import IPython
    import IPython.display
    from minitrain.plotting import new_figure
    shown = []
    monkeypatch.setattr(IPython.display, 'display', lambda obj, **kw: shown.append(obj))
    class Shell: execution_count = 7
    monkeypatch.setattr(IPython, 'get_ipython', lambda: Shell())
    fig, ax = new_figure()
    fig._ipython_display_(); fig._ipython_display_()      # the cell's value, then pyplot at the end of the cell
    assert len(shown) == 1
    Shell.execution_count = 8                               # a later cell shows it again
    fig._ipython_display_()
    assert len(shown) == 2


# 11. the original analysis code's CSVs ---------------------------------------------------------------------------

def test_visualizing_trainings_scrambled_epoch_column_is_read_by_step(tmp_path, recwarn):
    "Their `epoch` is a row counter in file-glob order; the step column is the time."
    from minitrain.runs import load_runs
    steps = np.array([30, 6, 24, 14, 40, 0, 2, 10, 18, 36])
    df = pd.DataFrame({'epoch': range(len(steps)), 'step': steps, 'l2': steps * 0.5})
    df.to_csv(tmp_path / 'lr0.001_seed0.csv')
    df.to_csv(tmp_path / 'lr0.001_seed1.csv')
    run = load_runs(tmp_path)[0]
    assert run['step'].tolist() == sorted(steps) and run['l2'].tolist() == sorted(steps * 0.5)
    assert run.attrs['time'] == 'step'


def test_first_n_cuts_each_run_like_the_original_scripts_first_n(capsys, tmp_path):
    "`--first_n` in the original scripts, `--first-n` here: only the first n checkpoints of each run are analysed."
    from minitrain.cli import main
    from minitrain.hmm import sample_phase_runs
    runs, _ = sample_phase_runs(n_runs=8, length=60, seed=1)
    for i, x in enumerate(runs):
        df = pd.DataFrame(x, columns=['l1', 'l2', 'trace', 'spectral', 'var_w'])
        df['step'] = np.arange(len(x)) * 10
        df.to_csv(tmp_path / f'lr0.001_seed{i}.csv')
    code = main(['analyze', str(tmp_path), '--ks', '1-2', '--restarts', '1', '--n-jobs', '1', '--features', 'l1', 'l2',
                 '--first-n', '25', '--out', str(tmp_path / 'cut')])
    assert code == 0, capsys.readouterr().err
    states = pd.read_csv(tmp_path / 'cut' / 'states.csv')
    decoded = states[states['latent_state'] >= 0]                   # the rest of each run is marked -1: not analysed
    assert decoded.groupby('run').size().eq(25).all() and decoded['step'].max() == 240
    from minitrain.hmm import fit_hmms
    sel = fit_hmms(runs, [f'f{i}' for i in range(5)], ks=[2], restarts=1, first_n=25, n_jobs=1)
    assert all(len(x) == 25 for x in sel.data.arrays) and len(runs[0]) == 60


def test_feature_importance_as_the_original_defines_it_and_the_other_way():
    "The original code's importance is the mean of |gradient| over an edge's transitions; |mean gradient| differs."
    from minitrain.hmm import fit_hmms, sample_phase_runs, training_map
    runs, _ = sample_phase_runs(n_runs=10, length=80, seed=2)
    sel = fit_hmms(runs, [f'f{i}' for i in range(5)], ks=[3], restarts=2, n_jobs=1)
    mean_abs, abs_mean = training_map(sel, importance='mean_abs'), training_map(sel, importance='abs_mean')
    for edge in mean_abs.edges:
        a = {f['feature']: f['importance'] for f in mean_abs.edges[edge]['features']}
        b = {f['feature']: f['importance'] for f in abs_mean.edges[edge]['features']}
        for k in set(a) & set(b): assert a[k] >= b[k] - 1e-12          # |mean| <= mean |.|, the triangle inequality
    with pytest.raises(ValueError, match="importance must be 'mean_abs' or 'abs_mean'"): training_map(sel, importance='max')


def test_an_r2_of_nan_says_why():
    from minitrain.hmm import convergence_regression
    runs = [pd.DataFrame({'epoch': range(6), 'valid_accuracy': [0.1] * 6}).assign(latent_state=[0, 0, 1, 1, 1, 1])
            for _ in range(4)]
    reg = convergence_regression(runs, threshold=0.9)
    assert np.isnan(reg.r2) and 'no run reached valid_accuracy >= 0.9' in reg.note
