"""Latent states while training: the filtered state of new runs from a known HMM, the columns and actions of
LatentStateCB, resuming, the state model on disk, and the convergence estimate."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitrain import Callback, DataLoaders, TensorLoader, TrainLearner
from minitrain.dynamics_cb import TrainingDynamicsCB
from minitrain.hmm import sample_phase_runs
from minitrain.hmm_report import analyze_runs
from minitrain.latent import FilteredState, LatentStateCB, SaveOnEnter, SaveWhileLikely, StateModel, StopInState

FEATS = [f'f{i}' for i in range(5)]


def frames(arrays, truths):
    out = []
    for i, (x, s) in enumerate(zip(arrays, truths)):
        df = pd.DataFrame(x, columns=FEATS)
        df['epoch'] = np.arange(len(df)) * 10
        df['valid_accuracy'] = np.where(s == 2, 0.95, 0.3)     # converged in the last phase
        df.attrs['name'] = f'seed{i}'
        out.append(df)
    return out


@pytest.fixture(scope='module')
def analysis(tmp_path_factory):
    arrays, truth = sample_phase_runs(n_runs=20, length=120, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return analyze_runs(frames(arrays, truth), out=tmp_path_factory.mktemp('a') / 'analysis', features=FEATS,
                            ks=[3], restarts=2, n_jobs=1, normalize='pooled')


@pytest.fixture(scope='module')
def new_runs():
    arrays, truth = sample_phase_runs(n_runs=6, length=120, seed=77)
    return frames(arrays, truth), truth


def test_the_filtered_state_follows_the_true_one_with_at_most_one_checkpoint_of_lag(analysis, new_runs):
    runs, truth = new_runs
    sm = StateModel.from_analysis(analysis)
    for run, s in zip(runs, truth):
        f = FilteredState(sm)
        states = np.array([f.update(row, row['epoch'])['latent_state'] for row in run.to_dict('records')])
        assert (states == s).mean() >= 0.9
        for t in np.where(np.diff(s) != 0)[0] + 1:           # each true transition is seen within one checkpoint
            assert states[t] == s[t] or states[min(t + 1, len(s) - 1)] == s[t], (t, states[t - 2:t + 3], s[t - 2:t + 3])


def test_the_convergence_estimate_gets_closer_as_the_run_goes_on(analysis):
    arrays, truth = sample_phase_runs(n_runs=30, length=120, seed=78)
    sm = StateModel.from_analysis(analysis)
    first, last, width_first, width_last = [], [], [], []
    for run, s in zip(frames(arrays, truth), truth):
        f = FilteredState(sm)
        est = pd.DataFrame([f.update(row, row['epoch']) for row in run.to_dict('records')])
        t_conv = run['epoch'][np.argmax(s == 2)]
        err = (est['converge_in'] - (t_conv - run['epoch'])).abs()
        before = np.where(run['epoch'] < t_conv)[0]
        late = before[int(0.75 * len(before)):]                              # the last quarter before convergence
        first.append(err.iloc[0]); last.append(err.iloc[late].mean())
        width = est['converge_in_hi'] - est['converge_in_lo']
        width_first.append(width.iloc[0]); width_last.append(width.iloc[late].mean())
        after = run['epoch'] >= t_conv
        assert (est.loc[after, 'converge_in'] == 0).all()                     # reached: nothing left
        ok = est.iloc[before].dropna()
        assert (ok['converge_in_lo'] <= ok['converge_in']).all() and (ok['converge_in'] <= ok['converge_in_hi']).all()
    assert np.mean(last) < 0.8 * np.mean(first), (np.mean(first), np.mean(last))
    assert np.mean(width_last) < 0.8 * np.mean(width_first)


def test_the_state_model_is_written_beside_a_pooled_analysis_as_plain_json(analysis, tmp_path):
    path = analysis.out / 'state_model.json'
    d = json.loads(path.read_text())
    assert d['features'] == FEATS and len(d['startprob']) == 3 and d['metric'] == 'valid_accuracy'
    loaded = StateModel.load(analysis.out)
    np.testing.assert_allclose(loaded.transmat, analysis.selection.model.transmat_)
    d['means'] = d['means'][:2]
    (tmp_path / 'bad.json').write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"bad\.json: shapes do not fit 3 states of 5 features: means \(2, 5\)"):
        StateModel.load(tmp_path / 'bad.json')
    with pytest.raises(FileNotFoundError, match="normalize='pooled'"): StateModel.load(tmp_path)


def test_a_per_run_analysis_is_refused_naming_the_fix(new_runs):
    runs, _ = new_runs
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        per_run = analyze_runs(runs, features=FEATS, ks=[2], restarts=1, n_jobs=1)
    with pytest.raises(ValueError, match="normalize='pooled'"): LatentStateCB(per_run)


class Replay(Callback):
    "Stands in for a real model: each checkpoint row gets the features of the next row of a generated run."
    order, columns = TrainingDynamicsCB.order - 2, FEATS
    def __init__(self, run): self.rows = run.to_dict('records')
    def values(self, row, learn): return {k: v for k, v in self.rows[len(self.dyn.rows)].items() if k in FEATS + ['valid_accuracy']}
    def before_fit(self, learn):
        self.dyn = next(cb for cb in learn.cbs if isinstance(cb, TrainingDynamicsCB))
        self.dyn.watch(self)


def replay_learner(run, *cbs):
    x, y = torch.randn(16, 2), torch.randn(16, 1)
    return TrainLearner(nn.Linear(2, 1), DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x, y, bs=8)), F.mse_loss,
                        lr=0.01, cbs=[Replay(run), *cbs])


def test_the_callback_writes_its_columns_and_resumes_where_it_was(analysis, new_runs, tmp_path):
    runs, truth = new_runs
    dyn = TrainingDynamicsCB(every=1, path=tmp_path / 'run')
    cb = LatentStateCB(analysis.out)                               # the analysis folder on disk
    learn = replay_learner(runs[0], dyn, cb).fit(60)
    rows = pd.read_csv(tmp_path / 'run' / 'metrics.csv', index_col=0)
    assert {'latent_state', 'latent_p', 'latent_p_leave', 'converge_in'} <= set(rows.columns) and len(rows) == 61
    assert learn.latent_state['latent_state'] == rows['latent_state'].iloc[-1]
    # a new process resumes the run: the state is filtered from the rows recorded before, then carried on
    again = LatentStateCB(analysis.out)
    dyn2 = TrainingDynamicsCB(every=1, path=tmp_path / 'run')
    learn2 = replay_learner(runs[0], dyn2, again)
    learn2.load(tmp_path / 'run' / 'checkpoint.pt')
    dyn2.rows = [None] * 61                                       # the replay continues at the run's row 61
    learn2.fit(119 - 60)
    full = pd.read_csv(tmp_path / 'run' / 'metrics.csv', index_col=0)
    assert len(full) == 120 and (full['latent_state'].to_numpy() == truth[0]).mean() >= 0.9
    one_go = FilteredState(StateModel.load(analysis.out))
    expected = [one_go.update(r, r['epoch'])['latent_state'] for r in runs[0].to_dict('records')]
    assert full['latent_state'].tolist() == expected                # as if it had never stopped


def test_actions_save_on_entering_save_while_likely_and_stop_in_a_state(analysis, new_runs, tmp_path):
    runs, truth = new_runs
    changes = []
    cb = LatentStateCB(analysis, actions=[lambda learn, cb, old, new: changes.append((learn.epoch, old, new)),
                                         SaveOnEnter(tmp_path / 'saved', states=[1]), SaveWhileLikely(tmp_path / 'likely', p=0.02),
                                         StopInState([2])])
    learn = replay_learner(runs[2], TrainingDynamicsCB(every=1, path=tmp_path / 'run'), cb).fit(119)
    first_2 = int(np.argmax(truth[2] == 2))
    assert learn.stop_reason == 'entered state 2' and abs(learn.epoch - first_2) <= 1      # stopped, not trained on
    assert [c[1:] for c in changes if c[1] != c[2] and c[1] is not None] == [(0, 1), (1, 2)]
    assert len(list((tmp_path / 'saved').glob('state1_epoch*.pt'))) == 1
    rows = pd.read_csv(tmp_path / 'run' / 'metrics.csv', index_col=0)
    likely = rows.loc[rows['latent_p_leave'] >= 0.02, 'epoch']
    assert 0 < len(likely) < len(rows) and sorted(int(p.stem.split('epoch')[1]) for p in (tmp_path / 'likely').glob('*.pt')) == sorted(likely)
    assert json.loads((tmp_path / 'run' / 'run.json').read_text())['reason'] == 'entered state 2'


def test_without_training_dynamics_or_its_features_the_callback_says_what_is_missing(analysis):
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    learn = TrainLearner(nn.Linear(2, 1), DataLoaders(TensorLoader(x, y, bs=4), TensorLoader(x, y, bs=4)), F.mse_loss,
                         lr=0.1, cbs=[LatentStateCB(analysis)])
    with pytest.raises(Exception, match='needs a TrainingDynamicsCB'): learn.fit(1)
    learn.cbs.append(TrainingDynamicsCB(every=1))
    with pytest.raises(Exception, match=r"uses \['f0'.*does not record"): learn.fit(1)
