"""Shared run folders are safe to open: nothing runs from a file, bad input is refused before anything is written,
and every way a run can end (a signal to the parent or to all, twice, a damaged file) is recorded."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitrain import TrainLearner
from minitrain.cli import main
from minitrain.files import load_checkpoint_file

MINITRAIN = Path(sys.executable).with_name('minitrain')
PARITY = '''workload = "sparse_parity"
seeds = 2
epochs = {epochs}
every = {every}
n_jobs = {n_jobs}
out = "{out}"
[model]
hidden = 16
'''


def config(tmp_path, epochs=4, every=2, n_jobs=1, extra='', name='exp.toml'):
    path = tmp_path / name
    path.write_text(PARITY.format(epochs=epochs, every=every, n_jobs=n_jobs, out=(tmp_path / 'runs').as_posix()) + extra)
    return path


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


class Payload:
    "What an attacker puts in a checkpoint: unpickling it runs a shell command."
    def __init__(self, marker: Path): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def evil_checkpoint(path: Path, marker: Path, model: nn.Module) -> Path:
    torch.save({'model': model.state_dict(), 'opt': None, 'epoch': 1, 'train_steps': 1, 'lr': 0.1, 'x': Payload(marker)}, path)
    return path


# 1. nothing runs from a file -----------------------------------------------------------------------------------

def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, dls):
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1)
    path = evil_checkpoint(tmp_path / 'shared.pt', tmp_path / 'PWNED', learn.model)
    with pytest.raises(ValueError, match=r"shared\.pt was refused: it holds objects that could run code.*state_dict"):
        learn.load(path)
    with pytest.raises(ValueError, match="was refused"): load_checkpoint_file(path)
    assert not (tmp_path / 'PWNED').exists()
    assert learn.epoch == 0


def test_a_harmless_foreign_object_is_refused_too_with_the_way_to_keep_the_weights(tmp_path, dls):
    "No switch unpickles arbitrary objects: whoever wrote the file, only tensors and plain data load."
    from argparse import Namespace   # an object weights_only refuses, harmless here
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1).fit(1)
    state = {'model': learn.model.state_dict(), 'opt': None, 'epoch': 1, 'train_steps': 5, 'lr': 0.1, 'note': Namespace(a=1)}
    torch.save(state, tmp_path / 'mine.pt')
    other = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match=r"mine\.pt was refused.*state_dict"): other.load(tmp_path / 'mine.pt')
    with pytest.raises(TypeError): other.load(tmp_path / 'mine.pt', trusted=True)
    torch.save({k: v for k, v in state.items() if k != 'note'}, tmp_path / 'weights.pt')   # what the message advises
    other.load(tmp_path / 'weights.pt')
    assert other.epoch == 1 and torch.equal(other.model.weight, learn.model.weight)


def test_a_minitrain_0_2_checkpoint_still_loads_with_its_random_state(tmp_path, dls):
    "0.2 stored numpy's state as an array and Python's as a tuple: allowed by name, nothing else is."
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1).fit(1)
    random.seed(5); np.random.seed(5); torch.manual_seed(5)
    old = {'model': learn.model.state_dict(), 'opt': learn.opt.state_dict(), 'opt_type': 'SGD', 'epoch': 1,
           'train_steps': learn.train_steps, 'lr': 0.1,
           'rng': {'torch': torch.get_rng_state(), 'python': random.getstate(), 'numpy': np.random.get_state(), 'cuda': None}}
    torch.save(old, tmp_path / 'old.pt')
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    other = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1)
    other.load(tmp_path / 'old.pt')
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert other.epoch == 1 and torch.equal(other.model.weight, learn.model.weight)


def test_resuming_a_shared_run_folder_never_runs_its_checkpoint(tmp_path, capsys):
    cfg = config(tmp_path)
    assert cli(['train', cfg], capsys)[0] == 0
    from minitrain.workloads import parity_mlp
    evil_checkpoint(tmp_path / 'runs' / 'seed0' / 'checkpoint.pt', tmp_path / 'PWNED', parity_mlp(40, 16))
    evil_checkpoint(tmp_path / 'runs' / 'seed1' / 'init.pt', tmp_path / 'PWNED', parity_mlp(40, 16))
    code, out, err = cli(['train', cfg, '--epochs', '6'], capsys)
    assert code == 1 and 'seed0/checkpoint.pt was refused' in err and 'seed1/init.pt was refused' in err
    assert not (tmp_path / 'PWNED').exists()


# 3. a damaged seed is skipped, not fatal ------------------------------------------------------------------------

def _write_run(folder: Path, n=30, seed=0, damage=None):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({'epoch': range(n), 'step': range(0, 10 * n, 10), 'l1': rng.normal(size=n).cumsum(),
                       'l2': rng.normal(size=n).cumsum(), 'valid_accuracy': np.linspace(0, 1, n)})
    df.to_csv(folder / 'metrics.csv')
    (folder / 'run.json').write_text(json.dumps({'status': 'finished', 'epochs_done': n}))
    text = (folder / 'metrics.csv').read_text()
    if damage == 'empty': (folder / 'metrics.csv').write_text('')
    if damage == 'torn header': (folder / 'metrics.csv').write_text(text[:9])
    if damage == 'header only': (folder / 'metrics.csv').write_text(text.splitlines()[0] + '\n')
    if damage == 'corrupt run.json': (folder / 'run.json').write_text('{"status": "fini')


def test_analyze_skips_damaged_runs_naming_them_and_never_reads_its_own_output(tmp_path, capsys, recwarn):
    runs = tmp_path / 'runs'
    for s in range(4): _write_run(runs / f'seed{s}', seed=s)
    for s, damage in enumerate(['empty', 'torn header', 'header only'], start=10): _write_run(runs / f'seed{s}', damage=damage)
    _write_run(runs / 'seed20', seed=20, damage='corrupt run.json')
    args = ['analyze', runs, '--ks', '1-2', '--restarts', '1', '--n-jobs', '1', '--features', 'l1', 'l2', '--out', runs]
    code, out, err = cli(args, capsys)
    assert code == 0, err
    warned = ' '.join(str(w.message) for w in recwarn)
    for s in (10, 11, 12): assert f'seed{s}' in warned
    summary = json.loads((runs / 'summary.json').read_text())
    assert sorted(summary['runs']) == ['seed0', 'seed1', 'seed2', 'seed20', 'seed3']   # and the one with a corrupt run.json
    code, out, err = cli(args, capsys)                 # again, into the same folder: its own files are not runs
    assert code == 0, err
    assert sorted(json.loads((runs / 'summary.json').read_text())['runs']) == sorted(summary['runs'])


# 4. a bad config is refused before anything is written --------------------------------------------------------

@pytest.mark.parametrize('extra, words', [
    ('lr = inf\n', ["'lr'", 'finite number > 0']),
    ('[data]\nbs = 0\n', ["'data.bs'", '>= 1']),
    ('[data]\nk = 50\n', ["k", "n_bits"]),
    ('[optimizer]\nname = "sgd"\nweight_decay = nan\n', ["'optimizer.weight_decay'", 'finite']),
    ('[optimizer]\nname = "adam"\nbetas = [0.9]\n', ["'optimizer.betas'", 'two numbers']),
])
def test_values_that_cannot_work_exit_2_naming_the_field_and_write_nothing(tmp_path, capsys, extra, words):
    text = config(tmp_path).read_text()
    (tmp_path / 'bad.toml').write_text(text + extra if extra.startswith('[') else extra + text)   # a table, or a top field
    code, out, err = cli(['train', tmp_path / 'bad.toml'], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for w in words: assert w in err, (w, err)
    assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('field, value, words', [
    ('model.hidden', '-1', ["'model.hidden'", '>= 1']), ('data.train_frac', '1.5', ['train_frac']),
    ('out', '', ["'out'", 'must name a folder']), ('out', '""', ["'out'", 'must name a folder']),
    ('seeds', '3-1', ["'seeds'", 'runs backwards']),
])
def test_more_values_that_cannot_work(tmp_path, capsys, field, value, words):
    workload = 'modular_addition' if field.startswith('data.train_frac') else 'sparse_parity'
    (tmp_path / 'c.toml').write_text(f'workload = "{workload}"\nout = "{(tmp_path / "runs").as_posix()}"\n')
    code, out, err = cli(['train', tmp_path / 'c.toml', '--set', f'{field}={value}'], capsys)
    assert code == 2 and 'Traceback' not in err, err
    for w in words: assert w in err, (w, err)
    assert not (tmp_path / 'runs').exists()


def test_experiment_json_is_written_when_the_first_run_starts_and_an_empty_folder_takes_a_new_config(tmp_path, capsys):
    cfg = config(tmp_path)
    runs = tmp_path / 'runs'
    runs.mkdir()
    (runs / 'experiment.json').write_text(json.dumps({'workload': 'sparse_parity', 'lr': 123.0}))   # no run ever started
    code, out, err = cli(['train', cfg], capsys)
    assert code == 0, err
    recorded = json.loads((runs / 'experiment.json').read_text())
    assert recorded['lr'] != 123.0 and recorded['model']['hidden'] == 16
    code, _, err = cli(['train', cfg, '--set', 'model.hidden=8'], capsys)   # now runs exist: a changed config is refused
    assert code == 2 and 'model.hidden: 16 there, 8 now' in err


def test_a_corrupt_experiment_json_names_the_file(tmp_path, capsys):
    cfg = config(tmp_path)
    (tmp_path / 'runs').mkdir()
    (tmp_path / 'runs' / 'experiment.json').write_text('{"workload": ')
    code, _, err = cli(['train', cfg], capsys)
    assert code == 2 and 'experiment.json' in err and 'not valid JSON' in err and len(err.strip().splitlines()) == 1


# 6. resources ---------------------------------------------------------------------------------------------------

def test_workers_are_capped_at_the_number_of_jobs(monkeypatch):
    import joblib
    from minitrain import parallel
    started = []
    real = joblib.Parallel
    def spy(*args, **kwargs):
        started.append(kwargs['n_jobs'])
        return real(*args, **kwargs)
    monkeypatch.setattr(joblib, 'Parallel', spy)
    assert parallel.parallel_map(divmod, [(7, 2), (9, 4), (5, 5)], n_jobs=16) == [(3, 1), (2, 1), (1, 0)]
    assert started == [3]


def test_a_huge_seed_range_is_refused_at_once(tmp_path, capsys):
    t = time.perf_counter()
    code, _, err = cli(['train', config(tmp_path), '--seeds', '0-999999999'], capsys)
    assert code == 2 and 'more than the limit of 10,000' in err and time.perf_counter() - t < 5
    code, _, err = cli(['train', config(tmp_path), '--n-jobs', '0'], capsys)
    assert code == 2 and "'n_jobs'" in err and 'whole number >= 1' in err


# 7. inputs that used to fail naming nothing ----------------------------------------------------------------------

def test_a_config_with_a_bom_or_from_a_pipe_is_read(tmp_path, capsys, monkeypatch):
    from minitrain.experiment import load_config
    text = config(tmp_path).read_text()
    (tmp_path / 'bom.toml').write_bytes('\ufeff'.encode() + text.encode())
    assert load_config(tmp_path / 'bom.toml')['seeds'] == [0, 1]
    import io
    monkeypatch.setattr(sys, 'stdin', io.StringIO(text))
    assert load_config('-')['model'] == {'hidden': 16}
    r, w = os.pipe()
    os.write(w, text.encode()); os.close(w)
    assert load_config(f'/dev/fd/{r}')['epochs'] == 4      # bash's <(...) hands over such a path
    os.close(r)


def test_analyze_flags_are_checked(tmp_path, capsys):
    code, _, err = cli(['analyze', tmp_path, '--ks', '9-1'], capsys)
    assert code == 2 and '--ks' in err and '9-1' in err
    code, _, err = cli(['analyze', tmp_path, '--n-jobs', '0'], capsys)
    assert code == 2 and '--n-jobs' in err


@pytest.mark.parametrize('key, value', [('epoch', 'abc'), ('epoch', -5), ('train_steps', 2.5), ('lr', 'fast')])
def test_a_checkpoint_with_a_nonsense_counter_is_refused_at_load(tmp_path, dls, key, value):
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1).fit(1)
    learn.save(tmp_path / 'ck.pt')
    state = torch.load(tmp_path / 'ck.pt', weights_only=True)
    state[key] = value
    torch.save(state, tmp_path / 'ck.pt')
    other = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1)
    with pytest.raises(ValueError, match=rf"ck\.pt: '{key}' is"):
        other.load(tmp_path / 'ck.pt')
    assert other.epoch == 0


@pytest.mark.parametrize('kwargs', [{'every': 2.5}, {'resolution': 2.5}, {'every': 0}, {'resolution': 1}])
def test_probmap_callback_refuses_fractional_settings(kwargs):
    from minitrain.probmaps import ProbMapCB
    with pytest.raises(ValueError, match=list(kwargs)[0]): ProbMapCB(**kwargs)


def test_demo_into_an_existing_file_is_refused_before_training(tmp_path, capsys):
    (tmp_path / 'report').write_text('my notes')
    t = time.perf_counter()
    code, _, err = cli(['demo', '--out', tmp_path / 'report'], capsys)
    assert code == 2 and 'is a file' in err and time.perf_counter() - t < 5
    assert (tmp_path / 'report').read_text() == 'my notes'


# 8. hand-edited metrics.csv -------------------------------------------------------------------------------------

def _edit_rows(csv: Path, edit):
    lines = csv.read_text().splitlines()
    csv.write_text('\n'.join(edit(lines)) + '\n')


def test_a_row_deleted_in_the_middle_is_named_on_resume_and_nothing_changes(tmp_path, capsys):
    cfg = config(tmp_path, epochs=6, every=1, extra='')
    cfg.write_text(cfg.read_text().replace('seeds = 2', 'seeds = 1'))
    assert cli(['train', cfg], capsys)[0] == 0
    csv = tmp_path / 'runs' / 'seed0' / 'metrics.csv'
    _edit_rows(csv, lambda ls: ls[:3] + ls[4:])                   # the row of epoch 2 deleted
    before = csv.read_text()
    code, _, err = cli(['train', cfg, '--epochs', '8'], capsys)
    assert code == 1 and 'missing the checkpoints at epoch [2]' in err
    assert csv.read_text() == before


def test_a_duplicated_row_is_dropped_once_with_a_warning_and_a_conflicting_one_refused(tmp_path, capsys):
    cfg = config(tmp_path, epochs=4, every=1)
    cfg.write_text(cfg.read_text().replace('seeds = 2', 'seeds = 1'))
    assert cli(['train', cfg], capsys)[0] == 0
    csv = tmp_path / 'runs' / 'seed0' / 'metrics.csv'
    _edit_rows(csv, lambda ls: ls[:3] + [ls[2]] + ls[3:])           # epoch 1 twice, the same numbers
    from minitrain.runs import load_runs
    with pytest.warns(RuntimeWarning, match='more than one row'):
        assert load_runs(tmp_path / 'runs')[0]['epoch'].tolist() == [0, 1, 2, 3, 4]
    with pytest.warns(RuntimeWarning, match='duplicate'):
        assert cli(['train', cfg, '--epochs', '6'], capsys)[0] == 0
    assert pd.read_csv(csv, index_col=0)['epoch'].tolist() == list(range(7))   # repaired: every epoch once
    _edit_rows(csv, lambda ls: ls + [ls[-1].split(',')[0] + ',' + ls[2].split(',', 1)[1].replace('1,', '6,', 1)])
    rows = pd.read_csv(csv, index_col=0)
    assert rows['epoch'].tolist().count(6) == 2
    code, _, err = cli(['train', cfg, '--epochs', '8'], capsys)
    assert code == 1 and 'two different rows for epoch 6' in err


# 5. every way to stop a run is recorded -----------------------------------------------------------------------

def _start_training(tmp_path):
    cfg = config(tmp_path, epochs=400, every=1, n_jobs=2)
    proc = subprocess.Popen([MINITRAIN, 'train', cfg.name], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    csvs = [tmp_path / 'runs' / f'seed{s}' / 'metrics.csv' for s in (0, 1)]
    deadline = time.time() + 120
    while time.time() < deadline and not all(c.exists() and len(c.read_text().splitlines()) > 3 for c in csvs):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    return proc


def _statuses(tmp_path):
    return [json.loads((tmp_path / 'runs' / f'seed{s}' / 'run.json').read_text()) for s in (0, 1)]


@pytest.mark.parametrize('sig, target', [(signal.SIGTERM, 'group'), (signal.SIGTERM, 'parent'), (signal.SIGINT, 'parent')])
def test_a_signal_stops_every_run_marked_with_it(tmp_path, sig, target):
    proc = _start_training(tmp_path)
    if target == 'group': os.killpg(proc.pid, sig)     # timeout(1), a terminal's Ctrl-C, SLURM: the whole group
    else: os.kill(proc.pid, sig)                        # docker stop, systemd, kill PID: the parent alone
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert 'interrupted. Kept in' in err and 'Resume with: minitrain train exp.toml' in err and 'Traceback' not in err
    assert 'leaked' not in err
    for meta in _statuses(tmp_path):
        assert meta['status'] == 'stopped' and signal.Signals(sig).name in meta['reason']


def test_two_ctrl_c_in_a_row_still_mark_every_run(tmp_path):
    proc = _start_training(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for meta in _statuses(tmp_path): assert meta['status'] == 'stopped', meta


def test_ctrl_c_while_the_command_is_still_importing_is_one_line(tmp_path):
    proc = subprocess.Popen([MINITRAIN, 'train', 'nothing.toml'], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)                                      # torch is still importing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
