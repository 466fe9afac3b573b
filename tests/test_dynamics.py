"Training dynamics part 1: weight metrics by hand, safe incremental storage, resume, original CSV format, run_seeds."
import json
import math
import os
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitrain import Callback, CallbackError, DataLoaders, MetricsCB, MulticlassAccuracy, TensorLoader, TrainLearner, set_seed
from minitrain.dynamics import LOSS_COLUMNS, RunFolder, SeedsFailedError, TrainingDynamicsCB, load_runs, run_seeds
from minitrain.weight_metrics import PAPER_METRICS, collect_weights, weight_metrics
from minitrain.workloads import (GrokkingPreset, LeNet5, ResNet, SignAccuracy, Transformer, hinge_loss,
                                 make_grokking_learner, modular_addition, parity_mlp, sparse_parity)

ORIGINAL_COLUMNS = ['l1', 'l2', 'trace', 'spectral', 'code_sparsity', 'computational_sparsity', 'mean_lambda',
                    'variance_lambda', 'mean_w', 'median_w', 'var_w', 'mean_b', 'median_b', 'var_b', 'step']


def linear(w, b=None):
    w = torch.tensor(w, dtype=torch.float32)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        lin.weight.copy_(w)
        if b is not None: lin.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return lin


def test_metrics_by_hand_rectangular_matrices():
    A = [[3., 0.], [0., 4.], [0., 0.]]          # 3x2: singular values 4, 3; trace 3+4
    B = [[1., 0., 0.], [0., 2., 0.]]            # 2x3: singular values 2, 1; trace 1+2
    m = weight_metrics(nn.Sequential(linear(A, [1., 2., 3.]), nn.ReLU(), linear(B, [0., 5.])))
    ap = lambda v: pytest.approx(v, rel=1e-6, abs=1e-9)
    assert m['l1'] == ap((7 + 3) / 2) and m['l2'] == ap((5 + math.sqrt(5)) / 2)
    assert m['code_sparsity'] == ap((7 / 5 + 3 / math.sqrt(5)) / 2)
    assert m['trace'] == ap(5) and m['spectral'] == ap(3) and m['computational_sparsity'] == ap((7 / 4 + 3 / 2) / 2)
    weights = np.array(A).ravel().tolist() + np.array(B).ravel().tolist()   # 12 values: ten zeros... and 3,4,1,2
    assert m['mean_w'] == ap(np.mean(weights)) and m['var_w'] == ap(np.var(weights))      # no Bessel (paper)
    assert m['median_w'] == 0
    assert m['mean_b'] == ap(2.2) and m['median_b'] == ap(2.) and m['var_b'] == ap(np.var([1, 2, 3, 0, 5]))
    svs = [4, 3, 2, 1]
    assert m['mean_lambda'] == ap(2.5) and m['variance_lambda'] == ap(np.var(svs, ddof=1))  # sample variance (paper)
    assert m['stable_rank'] == ap((25 / 16 + 5 / 4) / 2)
    ent = lambda s: -sum(p * math.log(p) for p in np.array(s) / sum(s))
    assert m['effective_rank'] == ap((math.exp(ent([4, 3])) + math.exp(ent([2, 1]))) / 2)


def test_median_of_even_count_is_middle_mean():
    m = weight_metrics(nn.Sequential(linear([[1., 2.], [3., 10.]], [1., 4.])))
    assert m['median_w'] == pytest.approx(2.5) and m['median_b'] == pytest.approx(2.5)
    assert math.isnan(weight_metrics(nn.Sequential(linear([[1., 2.]])))['mean_b'])   # no biases at all


def test_per_head_split_equals_explicit_matrices():
    set_seed(0)
    model = Transformer(p=7, d_model=8, n_heads=2, d_head=4, d_mlp=16)
    g = collect_weights(model)
    assert len(g.matrices) == 3 * 2 + 3            # Q, K, V per head + W_O, mlp_in, mlp_out; embeddings/unembed out
    assert not any(k.startswith(('embed', 'pos_embed', 'unembed')) for k in g.params)
    heads = [model.attn.W_Q[h] for h in range(2)] + [model.attn.W_K[h] for h in range(2)] + [model.attn.W_V[h] for h in range(2)]
    explicit = heads + [model.attn.W_O.weight, model.mlp_in.weight, model.mlp_out.weight]
    spec = np.mean([torch.linalg.matrix_norm(w.detach(), 2).item() for w in explicit])
    tr = np.mean([torch.trace(w.detach()).item() for w in explicit])
    m = weight_metrics(model)
    assert m['spectral'] == pytest.approx(spec, rel=1e-5) and m['trace'] == pytest.approx(tr, rel=1e-5, abs=1e-6)
    paper = collect_weights(Transformer())          # the paper's model: K = 15 matrices
    assert len(paper.matrices) == 15 and len(paper.biases) == 2


def test_multihead_attention_split():
    mha = nn.MultiheadAttention(8, 4)
    g = collect_weights(mha)
    assert len(g.matrices) == 3 * 4 + 1 and all(w.shape == (2, 8) for w in g.matrices[:12])


def test_conv_kernels_contribute_norms_only():
    conv = nn.Conv2d(1, 2, 2, bias=False)
    with torch.no_grad(): conv.weight.copy_(torch.tensor([[[[1., -1.], [0., 0.]]], [[[3., 4.], [0., 0.]]]]))
    m = weight_metrics(nn.Sequential(conv))
    assert m['l1'] == pytest.approx((2 + 7) / 2) and m['l2'] == pytest.approx((math.sqrt(2) + 5) / 2)
    assert math.isnan(m['spectral']) and math.isnan(m['trace'])
    lenet = collect_weights(LeNet5())
    assert len(lenet.kernels) == 2 and len(lenet.matrices) == 3


def test_batched_singular_values_match_per_matrix_svd():
    set_seed(1)
    model = Transformer(p=11, d_model=32, n_heads=4, d_head=8, d_mlp=64)
    g = collect_weights(model)
    pooled = torch.cat([torch.linalg.svd(w.float())[1] for w in g.matrices])
    m = weight_metrics(model)
    assert m['mean_lambda'] == pytest.approx(pooled.mean().item(), rel=1e-5)
    assert m['variance_lambda'] == pytest.approx(pooled.var().item(), rel=1e-4)


def test_non_finite_matrix_gives_nan_not_a_dropped_row():
    model = nn.Sequential(linear([[1., 2.], [3., 4.]], [0., 0.]), linear([[1., 0.], [0., 1.]]))
    with torch.no_grad(): model[0].weight[0, 0] = float('nan')
    m = weight_metrics(model)
    assert math.isnan(m['spectral']) and math.isnan(m['l1']) and m['mean_b'] == 0


def test_distance_update_and_gradient_metrics():
    model = nn.Sequential(linear([[1., 2.]], [0.5]))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(): model[0].weight += torch.tensor([[3., 4.]])
    prev = {'0.weight': torch.tensor([[4., 5.]]), '0.bias': torch.tensor([0.5])}
    grads = {'0.weight': torch.tensor([[0., 3.]]), '0.bias': torch.tensor([4.])}
    m = weight_metrics(model, init=init, prev=prev, grads=grads)
    assert m['dist_init'] == pytest.approx(5.) and m['grad_l2'] == pytest.approx(5.)
    assert m['update_rel'] == pytest.approx(1 / math.sqrt(16 + 36 + 0.25))


def test_hookpoints_prefix_and_values():
    set_seed(0)
    model = Transformer(p=7, d_model=8, n_heads=2, d_head=4, d_mlp=16)
    m = weight_metrics(model, hookpoints=['attn', 'mlp_in'], pooled=False)
    assert 'l1' not in m and 'attn.spectral' in m and 'mlp_in.l2' in m
    assert m['mlp_in.l2'] == pytest.approx(torch.linalg.vector_norm(model.mlp_in.weight).item(), rel=1e-6)
    both = weight_metrics(model, hookpoints={'mlp': ['mlp_in', 'mlp_out']})
    assert both['mlp.l1'] == pytest.approx((model.mlp_in.weight.abs().sum() + model.mlp_out.weight.abs().sum()).item() / 2, rel=1e-5)
    assert both['l1'] == pytest.approx(weight_metrics(model)['l1'])
    with pytest.raises(ValueError, match="hook point 'nope'"):
        weight_metrics(model, hookpoints=['nope'])


TINY = GrokkingPreset(p=11, d_model=16, n_heads=2, d_head=8, d_mlp=32, every=2)


class CrashAt(Callback):
    def __init__(self, epoch): self.at = epoch
    def before_epoch(self, learn):
        if learn.epoch == self.at: raise KeyError('simulated crash')


def test_crash_and_resume_keeps_every_row_exactly_once(tmp_path):
    ref = tmp_path / 'ref'
    run_seeds(partial(make_grokking_learner, preset=TINY), [3], ref, epochs=12, every=2)
    crashed = tmp_path / 'crashed'
    set_seed(3)
    learn = make_grokking_learner(3, TINY)
    cb = TrainingDynamicsCB(path=crashed / 'seed3', every=2, seed=3, target_epochs=12)
    with pytest.raises(CallbackError):
        learn.fit(12, cbs=[cb, CrashAt(7)])
    part = load_runs(crashed / 'seed3')[0]
    meta = json.loads((crashed / 'seed3' / 'run.json').read_text())
    assert part['epoch'].tolist() == [0, 2, 4, 6] and meta['status'] == 'failed'
    assert meta['reason'] == "CallbackError: CrashAt.before_epoch raised KeyError: 'simulated crash'"
    res = run_seeds(partial(make_grokking_learner, preset=TINY), [3], crashed, epochs=12, every=2)
    assert res[0]['status'] == 'resumed'
    a, b = load_runs(ref)[0], load_runs(crashed)[0]
    assert b['epoch'].tolist() == list(range(0, 13, 2))
    pd.testing.assert_frame_equal(a, b)          # same numbers as a run that never crashed


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    folder = RunFolder(tmp_path / 'r')
    for e in (0, 2, 4, 6): folder.append({'epoch': e, 'step': e * 3, 'l1': float(e)})
    assert len(folder.keep_until('epoch', 4)) == 3
    df = load_runs(tmp_path / 'r')[0]
    assert df['epoch'].tolist() == [0, 2, 4]
    folder.append({'epoch': 6, 'step': 18, 'l1': 6.5})
    assert load_runs(tmp_path / 'r')[0]['l1'].tolist() == [0., 2., 4., 6.5]
    folder.append({'epoch': 8, 'step': 24})             # a column missing from a row is left empty (NaN) ...
    assert np.isnan(load_runs(tmp_path / 'r')[0]['l1'].iloc[-1])
    with pytest.raises(ValueError, match="columns"):    # ... a column the file does not have is refused
        folder.append({'epoch': 10, 'step': 30, 'l1': 1., 'l9': 2.})


def test_a_run_folder_is_recorded_by_one_process_at_a_time(tmp_path):
    busy = RunFolder(tmp_path / 'run')
    busy.lock()
    assert (tmp_path / 'run' / '.lock').read_text() == str(os.getpid())
    learn = make_grokking_learner(0, TINY)
    cb = TrainingDynamicsCB(every=2, path=tmp_path / 'run', target_epochs=2)
    with pytest.raises(Exception, match=rf'being recorded by another process \(pid {os.getpid()}\)'):
        learn.fit(2, cbs=[cb])
    assert not (tmp_path / 'run' / 'metrics.csv').exists() and busy.meta() == {}   # the busy run is left alone
    busy.unlock()
    learn.fit(2, cbs=[cb])
    assert RunFolder(tmp_path / 'run').meta()['status'] == 'finished' and len(RunFolder(tmp_path / 'run').rows()) == 2
    again = RunFolder(tmp_path / 'run')
    again.lock()   # the fit released its lock
    again.unlock()


def test_original_csv_columns_round_trip(tmp_path):
    set_seed(0)
    learn = make_grokking_learner(0, TINY)
    learn.fit(4, cbs=[TrainingDynamicsCB(path=tmp_path / 'ours', every=2)])
    theirs_view = pd.read_csv(tmp_path / 'ours' / 'metrics.csv', index_col=0)   # how the original code reads CSVs
    assert set(ORIGINAL_COLUMNS + list(LOSS_COLUMNS)) <= set(theirs_view.columns)
    assert theirs_view['valid_accuracy'].notna().sum() == 2 and theirs_view.index.tolist() == [0, 1, 2]
    assert not any(c.startswith('eval_') for c in theirs_view.columns)    # minitrain writes valid_* everywhere
    # a CSV as the original code writes it (pandas index column, eval_* names, CNN names for the singular values)
    orig = pd.DataFrame({c: np.arange(3.) + i for i, c in enumerate(ORIGINAL_COLUMNS)})
    orig = orig.rename(columns={'mean_lambda': 'mean_singular_value', 'variance_lambda': 'var_singular_value'})
    orig['step'] = [40, 0, 20]
    orig['eval_loss'], orig['eval_accuracy'] = [0.5, 2.0, 1.0], [0.9, 0.1, 0.5]
    orig.to_csv(tmp_path / 'lr0.001_adamw_seed0_scaling1.0.csv')
    (run,) = load_runs(tmp_path / 'lr0.001_adamw_seed0_scaling1.0.csv')
    assert run['step'].tolist() == [0, 20, 40] and {'mean_lambda', 'variance_lambda'} <= set(run.columns)
    assert run['valid_accuracy'].tolist() == [0.1, 0.5, 0.9] and run['valid_loss'].tolist() == [2.0, 1.0, 0.5]
    assert not any(c.startswith('eval_') for c in run.columns)
    assert run.attrs['name'] == 'lr0.001_adamw_seed0_scaling1.0'


def test_old_run_folders_with_eval_columns_still_load(tmp_path):
    "Run folders written by minitrain 0.1 (eval_* columns) load with minitrain's valid_* names."
    set_seed(0)
    make_grokking_learner(0, TINY).fit(4, cbs=[TrainingDynamicsCB(path=tmp_path / 'seed0', every=2)])
    csv = tmp_path / 'seed0' / 'metrics.csv'
    new = load_runs(tmp_path)[0]
    csv.write_text(csv.read_text().replace('valid_loss', 'eval_loss').replace('valid_accuracy', 'eval_accuracy'))
    old = load_runs(tmp_path)[0]
    assert 'eval_accuracy' in pd.read_csv(csv).columns
    pd.testing.assert_frame_equal(old, new)


def test_run_json_records_the_run(tmp_path):
    run_seeds(partial(make_grokking_learner, preset=TINY), [1], tmp_path, epochs=2, every=2)
    meta = json.loads((tmp_path / 'seed1' / 'run.json').read_text())
    assert meta['seed'] == 1 and meta['model'] == 'Transformer' and meta['optimizer']['name'] == 'AdamW'
    assert meta['optimizer']['weight_decay'] == TINY.weight_decay and meta['hparams']['p'] == 11 and meta['status'] == 'finished'
    assert meta['versions']['torch'] == torch.__version__ and meta['epochs_done'] == 2


def test_run_seeds_two_workers_equal_sequential(tmp_path):
    make = partial(make_grokking_learner, preset=TINY)
    run_seeds(make, [0, 1], tmp_path / 'seq', epochs=6, every=2, n_jobs=1)
    run_seeds(make, [0, 1], tmp_path / 'par', epochs=6, every=2, n_jobs=2)
    for a, b in zip(load_runs(tmp_path / 'seq'), load_runs(tmp_path / 'par')):
        pd.testing.assert_frame_equal(a, b)


def test_step_unit_and_in_memory_rows():
    set_seed(0)
    learn = make_grokking_learner(0, GrokkingPreset(p=11, d_model=16, n_heads=2, d_head=8, d_mlp=32, bs=16))
    cb = TrainingDynamicsCB(every=5, unit='step')
    learn.fit(2, cbs=[cb])
    steps = cb.dataframe()['step'].tolist()
    assert steps == list(range(0, learn.train_steps + 1, 5)) and not math.isnan(cb.rows[1]['grad_l2'])
    assert math.isnan(cb.rows[0]['grad_l2']) and cb.rows[0]['dist_init'] == 0


def test_workloads():
    dls = modular_addition(p=13, train_frac=0.3)
    assert len(dls.train.tensors[0]) == round(0.3 * 169)
    dls = sparse_parity(n_bits=10, k=3, n_train=64, n_test=32, bs=16)
    set_seed(0)
    learn = TrainLearner(parity_mlp(10, 64), dls, hinge_loss, lr=0.1, cbs=[MetricsCB(acc=SignAccuracy())]).fit(30)
    assert learn.metrics.last('train')['acc'] > 0.9
    assert ResNet(width=4, c_in=1)(torch.randn(2, 1, 12, 12)).shape == (2, 10)


@pytest.mark.parametrize('preset, n_train, steps', [(GrokkingPreset(), 884, 1), (GrokkingPreset.classic(), 2823, 2),
                                                     (GrokkingPreset.paper(), 3831, 2)])
def test_grokking_presets_reach_the_data_and_the_optimizer(preset, n_train, steps):
    learn = make_grokking_learner(0, preset)
    group = learn.opt_func(learn.model.parameters()).param_groups[0]
    assert (group['lr'], group['weight_decay'], group['eps']) == (preset.lr, preset.weight_decay, preset.adam_eps)
    assert len(learn.dls.train.tensors[0]) == n_train and len(learn.dls.train) == steps   # 0.3 * 113**2 = 3831 in the paper
    assert learn.hparams['p'] == preset.p and learn.model.unembed.out_features == preset.p


@pytest.mark.parametrize('values', [[3., 1., 2.], [4., 1., 3., 2.], [1., 1., 1., 5.], [2., 2., 7., 7.], [5.]])
def test_median_paths_agree_with_numpy(values):
    from minitrain.weight_metrics import _median, _median_torch
    x = torch.tensor(values)
    assert _median(x).item() == pytest.approx(np.median(values)) == pytest.approx(_median_torch(x).item())


@pytest.mark.parametrize('make_model,lr,epochs', [(lambda: LeNet5(), 0.05, 5), (lambda: __import__('minitrain').MLP((64, 64, 10)), 0.1, 3)])
def test_digits_workloads_learn(make_model, lr, epochs):
    from minitrain import digits
    set_seed(0)
    learn = TrainLearner(make_model(), digits(bs=64), F.cross_entropy, lr=lr,
                         opt_func=lambda p, lr: torch.optim.SGD(p, lr, momentum=0.9),
                         cbs=[MetricsCB(accuracy=MulticlassAccuracy())]).fit(epochs)
    assert learn.metrics.last()['accuracy'] > 0.8


def test_run_seeds_refuses_a_folder_recorded_with_other_hparams(tmp_path):
    run_seeds(partial(make_grokking_learner, preset=TINY), [1], tmp_path, epochs=2, every=2)
    same = run_seeds(partial(make_grokking_learner, preset=TINY), [1], tmp_path, epochs=2, every=2)
    assert same[0]['status'] == 'skipped'
    other = GrokkingPreset(**{**TINY.__dict__, 'weight_decay': 0.5})
    with pytest.raises(SeedsFailedError, match=r"other hyper-parameters \(weight_decay: 3.0 there, 0.5 now\)"):
        run_seeds(partial(make_grokking_learner, preset=other), [1], tmp_path, epochs=4, every=2)
    assert load_runs(tmp_path / 'seed1')[0]['epoch'].tolist() == [0, 2]   # the recorded run is untouched


def test_sparse_parity_preset_is_the_papers_setting_and_records_every_epoch(tmp_path):
    from minitrain.workloads import SparseParityPreset, make_sparse_parity_learner
    pr = SparseParityPreset()
    assert (pr.n_bits, pr.k, pr.hidden, pr.n_train, pr.n_test, pr.lr, pr.weight_decay, pr.bs, pr.epochs, pr.every) == \
           (40, 3, 1000, 1000, 100, 0.1, 0.01, 32, 300, 1)
    learn = make_sparse_parity_learner(1)
    x, y = learn.dls.train.tensors
    assert x.shape == (1000, 40) and torch.equal(y, x[:, :3].prod(1)) and len(learn.dls.valid.tensors[0]) == 100
    assert [m.weight.shape for m in learn.model if isinstance(m, nn.Linear)] == [(1000, 40), (1, 1000)]
    bound = math.sqrt(6 / (40 + 1000))                                             # Xavier-uniform
    assert learn.model[0].weight.abs().max() <= bound and learn.model[0].weight.abs().max() > 0.95 * bound
    results = run_seeds(partial(make_sparse_parity_learner, preset=SparseParityPreset(epochs=3)), [0], tmp_path,
                        epochs=3, every=pr.every)
    (run,) = load_runs(tmp_path)
    assert results[0]['status'] == 'trained' and run['epoch'].tolist() == [0, 1, 2, 3]
    assert json.loads((tmp_path / 'seed0' / 'run.json').read_text())['optimizer']['name'] == 'SGD'
