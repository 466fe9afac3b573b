"The minitrain command: configs checked field by field, resumable training, analysis pages, exit codes, Ctrl-C."
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from minitrain.callbacks import set_seed
from minitrain.cli import main
from minitrain.experiment import ConfigError, load_config, make_experiment_learner
from minitrain.workloads import SparseParityPreset, make_sparse_parity_learner

MINITRAIN = Path(sys.executable).with_name('minitrain')   # the console script, installed beside this Python

PARITY = '''workload = "sparse_parity"
seeds = 2
epochs = 6
every = 2
n_jobs = 1
out = "{out}"
[model]
hidden = 32
'''


def write_config(tmp_path, text=PARITY, name='exp.toml', **fmt):
    path = tmp_path / name
    path.write_text(text.format(out=(tmp_path / 'runs').as_posix(), **fmt))
    return path


def run_main(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_and_help_on_every_command():
    for cmd in ([], ['demo'], ['train'], ['analyze']):
        res = subprocess.run([MINITRAIN, *cmd, '--help'], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.startswith('usage: minitrain'), res.stderr
    assert '--quick' in subprocess.run([MINITRAIN, 'demo', '--help'], capture_output=True, text=True).stdout


def test_config_resolves_to_the_preset_and_its_optimizer(tmp_path):
    cfg = load_config(write_config(tmp_path))
    pr = SparseParityPreset()
    assert cfg['seeds'] == [0, 1] and cfg['lr'] == pr.lr and cfg['model'] == {'hidden': 32}
    assert cfg['data'] == {'n_bits': 40, 'k': 3, 'n_train': 1000, 'n_test': 100, 'bs': 32}
    assert cfg['optimizer'] == {'name': 'sgd', 'weight_decay': pr.weight_decay} and cfg['unit'] == 'epoch'
    # the config's learner is the preset's learner: same weights, same optimiser settings
    ours, theirs = make_experiment_learner(3, cfg), make_sparse_parity_learner(3, SparseParityPreset(hidden=32))
    assert all((a == b).all() for a, b in zip(ours.model.parameters(), theirs.model.parameters()))
    set_seed(0); ours.fit(1)
    set_seed(0); theirs.fit(1)
    assert ours.opt.defaults == theirs.opt.defaults
    assert all((a == b).all() for a, b in zip(ours.model.parameters(), theirs.model.parameters()))


def test_flags_override_fields(tmp_path):
    cfg = load_config(write_config(tmp_path), {'epochs': '9', 'seeds': '3-5', 'lr': '0.05', 'model.hidden': '16',
                                               'optimizer.name': 'adam', 'optimizer.betas': '[0.8, 0.9]'})
    assert (cfg['epochs'], cfg['seeds'], cfg['lr'], cfg['model']['hidden']) == (9, [3, 4, 5], 0.05, 16)
    assert cfg['optimizer'] == {'name': 'adam', 'betas': [0.8, 0.9]}
    learn = make_experiment_learner(0, cfg)
    learn.fit(1)
    assert type(learn.opt).__name__ == 'Adam' and learn.opt.defaults['betas'] == (0.8, 0.9)
    assert load_config(write_config(tmp_path), {'seeds': '0,4'})['seeds'] == [0, 4]
    assert load_config(write_config(tmp_path), {'seeds': '3'})['seeds'] == [0, 1, 2]


BAD = [  # (config text or None for the default, flags, words the one-line message must contain)
    ('workload = "sparse_parity"\nout = "x"\nlrr = 0.1\n', [], ["unknown field 'lrr'", "did you mean 'lr'"]),
    ('out = "x"\n', [], ["'workload' is missing", 'workload = "sparse_parity"']),
    ('workload = "grokking"\nout = "x"\n', [], ["unknown workload 'grokking'", 'modular_addition, sparse_parity']),
    ('workload = "modular_addition"\npreset = "big"\nout = "x"\n', [], ["unknown preset of modular_addition 'big'", 'classic']),
    ('workload = "sparse_parity"\nout = "x"\n[model]\nhiden = 3\n', [], ["unknown model setting 'hiden'", "'hidden'"]),
    ('workload = "sparse_parity"\nout = "x"\n[data]\nhidden = 3\n', [], ["unknown data setting 'hidden'", 'n_bits']),
    ('workload = "sparse_parity"\nout = "x"\n[model]\nhidden = "wide"\n', [], ["'model.hidden'", 'must be a whole number', "got 'wide'"]),
    ('workload = "sparse_parity"\nout = "x"\nepochs = "ten"\n', [], ["'epochs'", 'must be a whole number', "got 'ten'"]),
    ('workload = "sparse_parity"\nout = "x"\nepochs = -1\n', [], ["'epochs'", 'whole number >= 0']),
    ('workload = "sparse_parity"\nout = "x"\nlr = 0\n', [], ["'lr'", '> 0']),
    ('workload = "sparse_parity"\nout = "x"\nseeds = [1, 1]\n', [], ["'seeds'", 'twice']),
    ('workload = "sparse_parity"\nout = "x"\nunit = "batch"\n', [], ["'unit'", '"epoch" or "step"']),
    ('workload = "sparse_parity"\nout = "x"\n[optimizer]\nname = "lion"\n', [], ["'optimizer.name'", "is 'lion'", 'choose sgd, adam, adamw']),
    ('workload = "sparse_parity"\nout = "x"\n[optimizer]\nmomentun = 0.9\n', [], ["'optimizer.momentun'", "is not a setting of sgd", "did you mean 'momentum'"]),
    ('workload = "sparse_parity"\nout = "x"\n[optimizer]\nmomentum = -1.0\n', [], ['refused by torch', 'momentum']),
    ('workload = "sparse_parity"\nout = "x"\nepochs = \n', [], ['is not valid TOML']),
    (None, ['--seeds', 'a-b'], ["'seeds'", 'a range (0-3)']),
    (None, ['--set', 'model.hidden'], ['--set takes FIELD=VALUE']),
    (None, ['--epochz', '3'], ['unrecognized arguments: --epochz']),
]


@pytest.mark.parametrize('text,flags,words', BAD)
def test_bad_configs_and_flags_are_one_line_with_exit_2(tmp_path, capsys, text, flags, words):
    cfg = write_config(tmp_path, text) if text is not None else write_config(tmp_path)
    code, out, err = run_main(['train', cfg, *flags], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    for w in words: assert w in lines[0], (w, lines[0])
    assert not (tmp_path / 'runs').exists()   # nothing written


def test_bad_paths(tmp_path, capsys):
    code, _, err = run_main(['train', tmp_path / 'missing.toml'], capsys)
    assert code == 2 and 'missing.toml not found' in err
    code, _, err = run_main(['train', tmp_path], capsys)
    assert code == 2 and 'is a folder: give the path of a .toml file' in err
    code, _, err = run_main(['analyze', tmp_path / 'nowhere'], capsys)
    assert code == 2 and 'nowhere not found' in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(['analyze', tmp_path, '--ks', '0-3'], capsys)
    assert code == 2 and '--ks needs numbers of states >= 1' in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match='not found'): main(['train', str(tmp_path / 'missing.toml'), '--debug'])


def test_train_continues_and_refuses_a_changed_config(tmp_path, capsys):
    cfg = write_config(tmp_path)
    code, out, err = run_main(['train', cfg], capsys)
    assert code == 0 and 'seed 0 trained, seed 1 trained' in out and f"minitrain analyze {tmp_path / 'runs'}" in out
    code, out, _ = run_main(['train', cfg, '--epochs', '10'], capsys)   # four more epochs: the runs continue
    assert code == 0 and 'seed 0 resumed, seed 1 resumed' in out
    resumed = pd.read_csv(tmp_path / 'runs' / 'seed1' / 'metrics.csv', index_col=0)
    assert resumed['epoch'].tolist() == [0, 2, 4, 6, 8, 10]
    # the same as one uninterrupted run of 10 epochs, number for number
    code, _, _ = run_main(['train', cfg, '--epochs', '10', '--seeds', '1-1', '--out', tmp_path / 'straight'], capsys)
    straight = pd.read_csv(tmp_path / 'straight' / 'seed1' / 'metrics.csv', index_col=0)
    pd.testing.assert_frame_equal(resumed, straight)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / 'runs').rglob('*') if p.is_file()}
    code, _, err = run_main(['train', cfg, '--lr', '0.5', '--set', 'model.hidden=8'], capsys)
    assert code == 2 and 'lr: 0.1 there, 0.5 now' in err and 'model.hidden: 32 there, 8 now' in err
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / 'runs').rglob('*') if p.is_file()}
    meta = json.loads((tmp_path / 'runs' / 'seed0' / 'run.json').read_text())
    assert meta['status'] == 'finished' and meta['hparams']['hidden'] == 32 and meta['hparams']['optimizer']['name'] == 'sgd'


def test_analyze_writes_a_page(tmp_path, capsys):
    cfg = write_config(tmp_path, PARITY.replace('seeds = 2', 'seeds = 4').replace('epochs = 6', 'epochs = 40'))
    assert run_main(['train', cfg], capsys)[0] == 0
    code, out, err = run_main(['analyze', tmp_path / 'runs', '--ks', '2-3', '--restarts', '2', '--n-jobs', '1',
                               '--features', 'l2', 'var_w', 'l1', '--out', tmp_path / 'page'], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / 'page' / 'model_selection.csv')
    assert sorted(table['k'].unique()) == [2, 3]
    page = (tmp_path / 'page' / 'index.html').read_text()
    k = json.loads((tmp_path / 'page' / 'summary.json').read_text())['k']
    assert f'{k} states; page written to' in out and page.count('<g class="node">') == k
    assert 'l2, var_w, l1' in page and (tmp_path / 'page' / 'runs.png').exists()
    code, _, err = run_main(['analyze', tmp_path / 'runs', '--features', 'l2', 'l9'], capsys)
    assert code == 2 and 'has no column l9' in err and 'choose --features from' in err


def test_ctrl_c_keeps_the_runs_and_says_how_to_resume(tmp_path):
    cfg = write_config(tmp_path, PARITY.replace('epochs = 6', 'epochs = 400').replace('n_jobs = 1', 'n_jobs = 2')
                                       .replace('every = 2', 'every = 1'))
    proc = subprocess.Popen([MINITRAIN, 'train', cfg.name], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    csv = tmp_path / 'runs' / 'seed1' / 'metrics.csv'
    deadline = time.time() + 120
    while time.time() < deadline and not (csv.exists() and len(csv.read_text().splitlines()) > 5): time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)          # what a terminal's Ctrl-C does: the whole process group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert 'interrupted. Kept in' in err and 'resumes from epoch' in err and f'Resume with: minitrain train {cfg.name}' in err
    assert 'Traceback' not in err
    kept = pd.read_csv(csv, index_col=0)['epoch'].tolist()
    assert kept == list(range(len(kept))) and len(kept) >= 5
    res = subprocess.run([MINITRAIN, 'train', cfg.name, '--epochs', str(kept[-1] + 3)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    again = pd.read_csv(csv, index_col=0)['epoch'].tolist()
    assert again == list(range(kept[-1] + 4))      # every checkpoint once, nothing lost
    for seed in (0, 1):
        assert json.loads((tmp_path / 'runs' / f'seed{seed}' / 'run.json').read_text())['status'] == 'finished'


def test_analyze_reads_the_original_codes_csvs(tmp_path, capsys):
    "modeling-training's folder of CSVs (unnamed index, `step`, eval_*) gives the same kind of page."
    import numpy as np
    from minitrain.hmm import sample_phase_runs
    runs, truth = sample_phase_runs(n_runs=12, length=100, seed=3)
    folder = tmp_path / 'modular_v3'
    folder.mkdir()
    for seed, (x, s) in enumerate(zip(runs, truth)):
        df = pd.DataFrame(x, columns=['l1', 'l2', 'trace', 'spectral', 'var_w'])
        df['step'] = np.arange(len(x)) * 10
        df['train_accuracy'], df['eval_accuracy'] = 0.3 + 0.35 * s, 0.2 + 0.4 * s   # above 0.9 in the last state
        df.to_csv(folder / f'lr0.001_adamw_seed{seed}.csv')
    code, out, err = run_main(['analyze', folder, '--ks', '1-4', '--restarts', '2', '--n-jobs', '1',
                               '--features', 'l1', 'l2', 'trace', 'spectral', 'var_w'], capsys)
    assert code == 0, err
    page = (folder / 'analysis' / 'index.html').read_text()
    assert '3 states; page written to' in out and page.count('<g class="node">') == 3
    lags = pd.read_csv(folder / 'analysis' / 'final_state_lags.csv').set_index('run')
    for seed, s in enumerate(truth):          # eval_accuracy passes 0.9 where a run enters its last true state
        lag = lags.loc[f'lr0.001_adamw_seed{seed}', 'lag']
        assert np.isnan(lag) if 2 not in s else abs(lag) <= 20, (seed, lag)   # within two checkpoints of the jump
