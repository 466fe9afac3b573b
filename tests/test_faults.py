"Faults injected and bad inputs: nothing recorded is lost, nothing torn is read, every error names its cause."
import errno
import json
import pickle
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import minitrain.checkpoint
import minitrain.dynamics
from minitrain import (Callback, CallbackError, CancelBatchException, DataLoaders, HooksCallback, Learner,
                       NonFiniteLossError, TensorLoader, TrainLearner, set_seed)
from minitrain.dynamics import RunFolder, SeedsFailedError, TrainingDynamicsCB, load_runs, run_seeds
from minitrain.hmm import prepare_runs
from minitrain.workloads import GrokkingPreset, make_grokking_learner

TINY = GrokkingPreset(p=11, d_model=16, n_heads=2, d_head=8, d_mlp=32, every=2)


@pytest.fixture
def dls():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1., -2., 3., 0.5])
    return DataLoaders(TensorLoader(x, y[:, None], bs=8), TensorLoader(x, y[:, None], bs=16))


def _record(folder: Path, epochs: int, every: int = 2, **kw) -> Learner:
    set_seed(3)
    learn = make_grokking_learner(3, TINY)
    learn.fit(epochs, cbs=[TrainingDynamicsCB(path=folder, every=every, seed=3, target_epochs=epochs, **kw)])
    return learn


def _resume(folder: Path, epochs: int, every: int = 2, **kw) -> Learner:
    set_seed(3)
    learn = make_grokking_learner(3, TINY).load(folder / 'checkpoint.pt')
    learn.fit(epochs - learn.epoch, cbs=[TrainingDynamicsCB(path=folder, every=every, seed=3, target_epochs=epochs, **kw)])
    return learn


# --- 1. a torn last line ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('cut', ['middle', 'epoch field'])
def test_a_torn_last_line_is_dropped_and_that_checkpoint_recomputed(tmp_path, cut, caplog):
    _record(tmp_path / 'ref', 6)
    reference = (tmp_path / 'ref' / 'metrics.csv').read_bytes()
    _record(tmp_path / 'run', 2)             # rows 0, 2 and the checkpoint of epoch 2 ...
    row4 = reference.splitlines(keepends=True)[3]
    torn = row4[:len(row4) // 2] if cut == 'middle' else row4[:row4.index(b',') + 1] + b'4'
    with open(tmp_path / 'run' / 'metrics.csv', 'ab') as f: f.write(torn)   # ... then the crash while writing row 4
    with pytest.warns(RuntimeWarning, match='partial line'):
        assert load_runs(tmp_path / 'run')[0]['epoch'].tolist() == [0, 2]    # readers skip the torn line
    _resume(tmp_path / 'run', 6)
    assert 'partial line' in caplog.text
    assert (tmp_path / 'run' / 'metrics.csv').read_bytes() == reference      # as if it had never crashed
    assert not list((tmp_path / 'run').glob('*.tmp'))


# --- 2. errors survive pickling; a failing seed is reported, the others finish or stop -------------------------

def test_minitrain_errors_survive_pickling():
    class Holder(Callback):
        def __init__(self): self.model = lambda x: x   # not picklable
    err = CallbackError(Holder(), 'after_batch', KeyError('x'))
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is CallbackError and str(back) == str(err) == "Holder.after_batch raised KeyError: 'x'"
    assert back.event == 'after_batch' and back.callback_name == 'Holder' and isinstance(back.error, KeyError)
    class Local(Exception):
        def __init__(self, a, b): super().__init__(f'{a}{b}')
    odd = pickle.loads(pickle.dumps(CallbackError(Holder(), 'before_fit', Local(1, 2))))
    assert str(odd) == 'Holder.before_fit raised Local: 12' and str(odd.error) == 'Local: 12'
    failed = SeedsFailedError([{'seed': 1, 'status': 'failed', 'error': 'KeyError: 1', 'traceback': 'Traceback...'}],
                              [{'seed': 0, 'status': 'trained'}, {'seed': 1, 'status': 'failed'}])
    back = pickle.loads(pickle.dumps(failed))
    assert str(back) == str(failed) and back.failures == failed.failures
    nan = pickle.loads(pickle.dumps(NonFiniteLossError('loss nan at batch 3')))
    assert str(nan) == 'loss nan at batch 3'


FLAT_SCRIPT = '''
import json, sys
from functools import partial
from minitrain import Callback
from minitrain.dynamics import SeedsFailedError, load_runs, run_seeds
from minitrain.workloads import GrokkingPreset, make_grokking_learner
TINY = GrokkingPreset(p=11, d_model=16, n_heads=2, d_head=8, d_mlp=32, every=2)

class Boom(Callback):
    def before_epoch(self, learn):
        if learn.epoch == FAIL_AT: raise KeyError('boom in seed 1')

def make(seed):
    learn = make_grokking_learner(seed, TINY)
    if seed == 1: learn.cbs.append(Boom())
    return learn

FAIL_AT, mode, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    res = run_seeds(make, [0, 1, 2], out, epochs=int(sys.argv[4]), every=2, n_jobs=2, on_error=mode)
    print(json.dumps({'ok': [r['status'] for r in res]}))
except SeedsFailedError as e:
    print(json.dumps({'statuses': {r['seed']: r['status'] for r in e.results}, 'message': str(e)}))
'''


def _flat(tmp_path: Path, *args) -> dict:
    script = tmp_path / 'flat.py'            # no `if __name__ == '__main__':` guard, functions defined in the script
    script.write_text(FLAT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_failing_seed_is_reported_with_its_traceback_and_the_others_finish(tmp_path):
    out = _flat(tmp_path, 1, 'finish', tmp_path / 'runs', 4)
    assert out['statuses'] == {'0': 'trained', '1': 'failed', '2': 'trained'}
    assert "seed 1: CallbackError: Boom.before_epoch raised KeyError: 'boom in seed 1'" in out['message']
    assert 'Traceback (most recent call last)' in out['message'] and 'in before_epoch' in out['message']
    meta = {s: RunFolder(tmp_path / 'runs' / f'seed{s}').meta() for s in (0, 1, 2)}
    assert meta[0]['status'] == meta[2]['status'] == 'finished' and meta[1]['status'] == 'failed'
    assert 'boom in seed 1' in meta[1]['reason'] and meta[1]['epochs_done'] == 1
    assert load_runs(tmp_path / 'runs' / 'seed0')[0]['epoch'].tolist() == [0, 2, 4]


def test_on_error_stop_stops_the_other_seeds_cleanly(tmp_path):
    out = _flat(tmp_path, 30, 'stop', tmp_path / 'runs', 3000)
    assert out['statuses']['1'] == 'failed' and out['statuses']['2'] == 'not started'
    assert out['statuses']['0'] == 'stopped'
    seed0 = RunFolder(tmp_path / 'runs' / 'seed0').meta()
    assert seed0['status'] == 'stopped' and 0 < seed0['epochs_done'] < 3000
    assert not list((tmp_path / 'runs').glob('.stop-*'))   # the flag of this call is gone


# --- 3. every cleanup runs; the first error wins; failed writes leave no temporary files -------------------------

class FailIn(Callback):
    def __init__(self, event): setattr(self, event, self.fail); self.event = event
    def fail(self, learn): raise OSError(f'failed in {self.event}')


def test_a_failing_cleanup_neither_skips_the_others_nor_masks_the_error(dls):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    hooks = HooksCallback(lambda hook, mod, inp, out: None, mods=[model[0], model[2]])
    cleanup = FailIn('cleanup_fit')
    cleanup.order = -1      # runs before HooksCallback's cleanup
    learn = TrainLearner(model, dls, F.mse_loss, lr=0.1, cbs=[cleanup, hooks, FailIn('after_batch')])
    with pytest.raises(CallbackError, match='FailIn.after_batch raised OSError: failed in after_batch') as info:
        learn.fit(1)
    assert any('cleanup_fit failed too' in n and 'failed in cleanup_fit' in n for n in info.value.__notes__)
    assert not model[0]._forward_hooks and not model[2]._forward_hooks   # the hooks still came off
    learn = TrainLearner(model, dls, F.mse_loss, lr=0.1, cbs=[FailIn('cleanup_fit'), FailIn('cleanup_fit'), hooks])
    with pytest.raises(CallbackError, match='failed in cleanup_fit') as info:   # no error before: the cleanup's
        learn.fit(1)
    assert any('cleanup_fit also failed' in n for n in info.value.__notes__)
    assert not model[0]._forward_hooks


def test_a_full_disk_mid_run_is_reported_as_itself_and_marks_the_run_failed(tmp_path, monkeypatch):
    real_save, calls = torch.save, []
    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 3:      # the checkpoint of epoch 2 (after init.pt and epoch 0's)
            Path(f).write_bytes(b'half a checkpoint')
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(CallbackError, match='No space left on device'):
        _record(tmp_path / 'run', 6)
    meta = RunFolder(tmp_path / 'run').meta()
    assert meta['status'] == 'failed' and 'No space left on device' in meta['reason']
    assert not list((tmp_path / 'run').glob('*.tmp'))
    monkeypatch.setattr(torch, 'save', real_save)
    assert load_runs(tmp_path / 'run')[0]['epoch'].tolist() == [0, 2]      # rows written before the fault are kept


def test_a_folder_turning_read_only_reports_the_first_error(tmp_path, monkeypatch):
    real_append, real_write_text = RunFolder.append, Path.write_text
    def append(self, row):
        if row['epoch'] == 4: raise PermissionError(errno.EROFS, 'Read-only file system', str(self.csv))
        return real_append(self, row)
    def write_text(path, text, *args, **kwargs):   # the disk refuses run.json.tmp half-way, once epoch 2 is written
        rows = RunFolder(path.parent).rows() if path.name.startswith('run.json.') and path.suffix == '.tmp' else []
        if rows and rows[-1]['epoch'] == '2':
            real_write_text(path, text[:5])
            raise PermissionError(errno.EROFS, 'Read-only file system', str(path))
        return real_write_text(path, text, *args, **kwargs)
    monkeypatch.setattr(RunFolder, 'append', append)
    monkeypatch.setattr(Path, 'write_text', write_text)
    with pytest.raises(CallbackError, match=r"metrics.csv") as info:     # the first fault, not run.json.tmp's
        _record(tmp_path / 'run', 6)
    assert '.tmp' not in str(info.value)
    assert any('run.json.' in n and '.tmp' in n for n in info.value.__notes__)         # the later fault is attached, not lost
    assert not list((tmp_path / 'run').glob('*.tmp'))
    again = RunFolder(tmp_path / 'run')
    again.lock()            # the failed run released its lock
    again.unlock()


# --- 4. learn.load checks everything before it changes anything -------------------------------------------------

def test_load_refuses_another_model_without_touching_this_one(tmp_path, dls):
    TrainLearner(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 1)), dls, F.mse_loss, lr=0.1).fit(1).save(tmp_path / 'a.pt')
    other = TrainLearner(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), dls, F.mse_loss, lr=0.1)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"a\.pt was saved from another model: 1\.weight is \(1, 8\) there, \(2, 8\) here"):
        other.load(tmp_path / 'a.pt')
    assert all(torch.equal(before[k], v) for k, v in other.model.state_dict().items())   # first layer not overwritten
    assert other.epoch == 0 and other.opt is None


@pytest.mark.parametrize('content, found', [
    (b'', 'is empty'), (b'not a checkpoint at all', 'is not a readable checkpoint'), ('truncate', 'is not a readable checkpoint'),
    ('state_dict', 'holds a plain state_dict'), ('list', 'holds a list')])
def test_load_names_the_path_and_what_it_found(tmp_path, dls, content, found):
    learn = TrainLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=0.1)
    path = tmp_path / 'ck.pt'
    if content == 'truncate':
        learn.save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == 'state_dict': torch.save(learn.model.state_dict(), path)
    elif content == 'list': torch.save([1, 2], path)
    else: path.write_bytes(content)
    with pytest.raises(ValueError, match=str(path).replace('.', r'\.') + ' ' + found):
        learn.load(path)
    with pytest.raises(IsADirectoryError, match='is a folder'): learn.load(tmp_path)
    with pytest.raises(FileNotFoundError, match='No checkpoint at'): learn.load(tmp_path / 'missing.pt')


def test_an_adam_checkpoint_is_refused_by_an_sgd_learner_at_load(tmp_path, dls):
    adam = TrainLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=0.01, opt_func=torch.optim.Adam).fit(1)
    adam.save(tmp_path / 'adam.pt')
    sgd = TrainLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=0.01)
    with pytest.raises(ValueError, match='saved with Adam, this learner uses SGD'):
        sgd.load(tmp_path / 'adam.pt')
    state = torch.load(tmp_path / 'adam.pt', weights_only=False)
    del state['opt_type']                      # a checkpoint from before opt_type was recorded
    torch.save(state, tmp_path / 'old.pt')
    with pytest.raises(ValueError, match=r"another optimizer's state: group 0 options \[.*'betas'"):
        sgd.load(tmp_path / 'old.pt')
    assert sgd.opt is None and sgd.epoch == 0


# --- 5. accepted silently no more ---------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, match', [
    ({'n_epochs': -1}, r"whole number of epochs >= 0, got -1"), ({'n_epochs': 1.5}, r"got 1\.5"),
    ({'n_epochs': '2'}, r"got '2'"), ({'lr': -0.1}, r"fit\(lr=\.\.\.\): the learning rate must be a number >= 0, got -0\.1"),
    ({'lr': '0.1'}, r"got '0\.1'")])
def test_fit_refuses_bad_epochs_and_learning_rates(dls, kwargs, match):
    learn = TrainLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=0.1).fit(1)   # an optimizer exists already
    lr = learn.opt.param_groups[0]['lr']
    with pytest.raises(ValueError, match=match): learn.fit(**kwargs)
    assert learn.opt.param_groups[0]['lr'] == lr and learn.epoch == 1
    with pytest.raises(ValueError, match=r"Learner\(lr=\.\.\.\)"): TrainLearner(nn.Linear(4, 1), dls, F.mse_loss, lr='1e-3')


def test_resuming_with_another_cadence_or_hookpoints_is_refused_before_anything_is_written(tmp_path):
    _record(tmp_path / 'run', 4)
    before = {p.name: p.read_bytes() for p in (tmp_path / 'run').iterdir() if p.is_file()}
    for kw, match in [({'every': 3}, r"every: 2 there, 3 now"), ({"unit": "step"}, r"unit: 'epoch' there, 'step' now"),
                      ({'hookpoints': ['attn']}, r"other hook points \(the whole model only there, \['attn'\] now\)")]:
        with pytest.raises(CallbackError, match=match):
            _resume(tmp_path / 'run', 8, **kw)
        after = {p.name: p.read_bytes() for p in (tmp_path / 'run').iterdir() if p.is_file()}
        assert after == before            # run.json, metrics.csv and the checkpoint untouched


def test_columns_declared_by_the_callback_are_the_columns_written(tmp_path):
    set_seed(0)
    learn = make_grokking_learner(0, TINY)
    cb = TrainingDynamicsCB(path=tmp_path / 'r', every=1, hookpoints=['attn', 'mlp_in'])
    learn.fit(1, cbs=[cb])
    assert RunFolder(tmp_path / 'r').columns() == cb.columns == list(cb.rows[0])


def test_the_nonfinite_error_names_the_right_batch_when_batches_are_cancelled(dls):
    class SkipSome(Callback):
        def after_predict(self, learn):
            if learn.training and learn.iter in (1, 3): raise CancelBatchException()
    class NanAt5(Callback):
        order = 1
        def after_predict(self, learn):
            if learn.training and learn.iter == 5: learn.preds = learn.preds * float('nan')
    learn = TrainLearner(nn.Linear(4, 1), dls, F.mse_loss, lr=0.01, cbs=[SkipSome(), NanAt5()])
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, train batch 5\."):
        learn.fit(1)


@pytest.mark.parametrize('loss_func', [F.mse_loss, nn.MSELoss(), F.l1_loss, nn.SmoothL1Loss()])
def test_an_elementwise_loss_refuses_to_broadcast_preds_against_targets(loss_func):
    x = torch.randn(32, 4)
    flat = DataLoaders(TensorLoader(x, x.sum(1), bs=8), TensorLoader(x, x.sum(1), bs=8))   # targets (N,), preds (N, 1)
    name = getattr(loss_func, '__name__', type(loss_func).__name__)
    with pytest.raises(ValueError, match=rf"{name}: preds have shape \(8, 1\) but targets \(8,\); torch would broadcast"):
        TrainLearner(nn.Linear(4, 1), flat, loss_func, lr=0.1).fit(1)
    TrainLearner(nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)), flat, loss_func, lr=0.1).fit(1)   # matched: trains


def test_datasets_and_lists_where_loaders_belong_are_refused(dls):
    ds = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
    with pytest.raises(TypeError, match=r"train is a dataset \(TensorDataset\), not a loader: wrap it"):
        DataLoaders(ds, ds)
    with pytest.raises(TypeError, match=r"dls must have \.train and \.valid loaders \(a DataLoaders\), got list"):
        TrainLearner(nn.Linear(4, 1), [dls.train, dls.valid], F.mse_loss, lr=0.1).fit(1)


def test_a_model_of_the_wrong_input_size_names_the_batch_and_the_layer(dls):
    learn = TrainLearner(nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 1)), dls, F.mse_loss, lr=0.1)
    with pytest.raises(ValueError, match=r"inputs have shape \[\(8, 4\)\]\. Its first layer Linear\(in_features=5.*"
                                         r"expects inputs of shape \(N, 5\)"):
        learn.fit(1)


def _runs(n: int = 3) -> list[pd.DataFrame]:
    rng = np.random.default_rng(0)
    runs = []
    for i in range(n):
        df = pd.DataFrame({'epoch': np.arange(20), 'l1': rng.normal(size=20).cumsum(), 'l2': rng.normal(size=20).cumsum(),
                           'var_w': np.full(20, np.nan)})
        df.attrs['name'] = f'seed{i}'
        runs.append(df)
    return runs


def test_a_column_empty_in_every_run_is_dropped_not_the_runs():
    with pytest.warns(RuntimeWarning, match=r"features \['var_w'\] have no values in any run"):
        data = prepare_runs(_runs(), ['l1', 'l2', 'var_w'])
    assert data.names == ['seed0', 'seed1', 'seed2'] and data.features == ['l1', 'l2'] and not data.dropped_runs


def test_a_string_in_a_numeric_column_names_the_run_and_column():
    runs = _runs()
    runs[1]['l2'] = runs[1]['l2'].astype(object)
    runs[1].loc[7, 'l2'] = '0.5x'
    with pytest.raises(ValueError, match=r"run 'seed1', column 'l2': '0\.5x' \(row 7\) is not a number"):
        prepare_runs(runs, ['l1', 'l2'])
