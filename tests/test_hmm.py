"HMM analysis: recovering a known HMM, the posterior gradient, selection, robustness, regression, dissimilarity, plots."
import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score

from minitrain.hmm import (convergence_regression, decode, filtered_posteriors, fit_hmms, posterior_gradient,
                           prepare_runs, sample_phase_runs, trajectory_dissimilarity, training_map)
from minitrain.hmm_html import metrics_html, model_selection_html, training_map_html
from minitrain.hmm_plots import plot_metrics_with_states, plot_model_selection, plot_training_map
from minitrain.hmm_report import analyze_runs

FEATS = [f'f{i}' for i in range(5)]


@pytest.fixture(scope='module')
def known():
    runs, truth = sample_phase_runs(n_runs=20, seed=0)
    sel = fit_hmms(runs, FEATS, ks=range(1, 7), restarts=3, n_jobs=1, seed=0, n_iter=32)
    return runs, truth, sel


def frames(runs, truth=None, step=10):
    out = []
    for i, x in enumerate(runs):
        df = pd.DataFrame(x, columns=FEATS)
        df['epoch'] = np.arange(len(df)) * step
        if truth is not None: df['valid_accuracy'] = (truth[i] == 2).astype(float)
        df.attrs['name'] = f'seed{i}'
        out.append(df)
    return out


def test_known_hmm_recovered(known):
    runs, truth, sel = known
    assert sel.k == 3
    pred = np.concatenate([sel.model.predict(x) for x in sel.data.arrays])
    assert adjusted_rand_score(np.concatenate(truth), pred) > 0.9
    # states are numbered by first visit, so they match the true numbering
    assert (pred == np.concatenate(truth)).mean() > 0.97


def test_map_has_exactly_the_true_transitions_and_explaining_features(known):
    _, _, sel = known
    tmap = training_map(sel)
    assert set(tmap.edges) == {(0, 1), (1, 2)}
    assert tmap.start_states == {0: 20} and tmap.end_states == {2: 20}
    # true means: state 1 differs from 0 in f0 (+3) and f2 (-2); state 2 differs from 1 in f1 (+4) and f4 (+2)
    top2 = lambda e: {f['feature'] for f in tmap.edges[e]['features'][:2]}
    assert top2((0, 1)) == {'f0', 'f2'} and top2((1, 2)) == {'f1', 'f4'}
    signs = {f['feature']: np.sign(f['delta']) for f in tmap.edges[(0, 1)]['features']}
    assert signs['f0'] > 0 and signs['f2'] < 0
    assert tmap.edges[(0, 1)]['n_runs'] == 20 and 0 < tmap.edges[(0, 1)]['prob'] < 0.2


def test_sticky_initialisation_beats_hmmlearns_default(known):
    runs, truth, sticky = known
    rand = fit_hmms(runs, FEATS, ks=range(1, 7), restarts=3, n_jobs=1, seed=0, n_iter=32, init='random')
    ari = lambda sel: adjusted_rand_score(np.concatenate(truth), np.concatenate([sel.model.predict(x) for x in sel.data.arrays]))
    assert sticky.k == 3 and ari(sticky) > 0.99
    assert rand.k != 3 or ari(rand) < 0.9          # measured: K=4, ARI 0.73
    assert ari(sticky) > ari(rand)


def test_posterior_gradient_equals_finite_differences(known):
    runs, _, sel = known
    model, x = sel.model, sel.data.arrays[0].copy()
    t, eps = 40, 1e-5
    for k in range(model.n_components):
        g = posterior_gradient(model, x, t, k)
        fd = np.empty(x.shape[1])
        for i in range(x.shape[1]):
            xp, xm = x.copy(), x.copy()
            xp[t, i] += eps; xm[t, i] -= eps
            fd[i] = (np.log(filtered_posteriors(model, xp[:t + 1])[t, k]) - np.log(filtered_posteriors(model, xm[:t + 1])[t, k])) / (2 * eps)
        assert np.allclose(g, fd, rtol=1e-4, atol=1e-6), (k, g, fd)


def test_filtered_posterior_is_a_forward_pass(known):
    _, _, sel = known
    x = sel.data.arrays[1]
    post = filtered_posteriors(sel.model, x)
    assert np.allclose(post.sum(1), 1)
    # at the last checkpoint the filtered and smoothed posteriors coincide
    assert np.allclose(post[-1], sel.model.predict_proba(x)[-1], atol=1e-6)


def test_reproducible_and_parallel_equals_sequential():
    runs, _ = sample_phase_runs(n_runs=8, length=80, seed=5)
    kw = dict(features=FEATS, ks=range(1, 4), restarts=2, seed=3, n_iter=20)
    a, b = fit_hmms(runs, n_jobs=1, **kw), fit_hmms(runs, n_jobs=1, **kw)
    pd.testing.assert_frame_equal(a.table, b.table)
    c = fit_hmms(runs, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(a.table, c.table)
    d = fit_hmms(runs, n_jobs=1, **{**kw, 'seed': 4})
    assert not a.table['test_loglik'].equals(d.table['test_loglik'])


def test_constant_feature_and_nan_runs_reported():
    runs, _ = sample_phase_runs(n_runs=6, length=60, seed=1)
    dfs = frames(runs)
    for df in dfs: df['const'] = 1.0
    dfs[2].loc[5, 'f0'] = np.nan
    with pytest.warns(RuntimeWarning) as rec:
        data = prepare_runs(dfs, FEATS + ['const'])
    msgs = ' '.join(str(w.message) for w in rec)
    assert "run 'seed2'" in msgs and "['f0']" in msgs and "['const']" in msgs
    assert data.dropped_runs == ['seed2'] and data.dropped_features == ['const'] and data.features == FEATS
    assert len(data.arrays) == 5 and all(np.allclose(a.mean(0), 0) and np.allclose(a.std(0), 1) for a in data.arrays)


def test_too_few_points_skips_k_with_warning():
    runs, _ = sample_phase_runs(n_runs=3, length=30, seed=2)
    with pytest.warns(RuntimeWarning, match="K=4 has .* parameters"):
        sel = fit_hmms(runs, FEATS, ks=range(1, 5), restarts=1, n_jobs=1, test_frac=0.34)
    assert 4 not in set(sel.table['k'])


def test_decode_adds_latent_state(known):
    runs, truth, sel = known
    dec = decode(sel, frames(runs[:3]))
    assert list(dec[0]['latent_state'][:5]) == [0] * 5 and dec[0]['latent_state'].iloc[-1] == 2
    assert 'latent_state' not in frames(runs[:1])[0]


def test_regression_finds_detour_state():
    rng = np.random.default_rng(0)
    decoded = []
    for i in range(30):
        detour = i % 3 == 0                       # a third of the runs take state 2, which costs time
        n0, n2 = rng.integers(10, 30), (rng.integers(20, 40) if detour else 0)
        states = np.r_[np.zeros(n0), np.full(n2, 2), np.ones(100 - n0 - n2)].astype(int)
        conv = n0 + n2                            # convergence when state 1 starts
        acc = (np.arange(100) >= conv).astype(float)
        decoded.append(pd.DataFrame({'epoch': np.arange(100), 'latent_state': states, 'valid_accuracy': acc}))
    reg = convergence_regression(decoded, metric='valid_accuracy', threshold=0.9)
    states = [d['latent_state'].to_numpy() for d in decoded]
    same = convergence_regression([d.drop(columns='latent_state') for d in decoded], states, threshold=0.9)
    assert same.r2 == reg.r2 and same.detours == reg.detours
    assert reg.r2 > 0.99 and reg.p_value < 1e-6 and reg.detours == [2]
    assert reg.coefficients[2] > 0 and reg.convergence[next(iter(reg.convergence))] == decoded[0].valid_accuracy.argmax()


def test_dissimilarity_independent_of_state_numbering():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 4, size=50) for _ in range(6)]
    perm = np.array([2, 0, 3, 1])
    assert trajectory_dissimilarity(seqs) == pytest.approx(trajectory_dissimilarity([perm[s] for s in seqs]))
    assert trajectory_dissimilarity([np.zeros(10, int), np.ones(10, int)]) == 1.0
    assert trajectory_dissimilarity([np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])]) == pytest.approx(0.25)


def test_plots_html_and_full_analysis(known, tmp_path):
    runs, truth, sel = known
    tmap = training_map(sel)
    assert isinstance(plot_model_selection(sel), Figure) and isinstance(plot_training_map(tmap), Figure)
    page = training_map_html(tmap, tmp_path / 'map.html')
    assert page.count('<g class="edge">') == 2 and page.count('<g class="node">') == 3 and '0 → 1: 20/20 runs' in page
    dec = decode(sel, frames(runs, truth))
    fig = plot_metrics_with_states(dec, metrics=('f0', 'f1'), runs=[0, 1])
    assert sum(a.get_title().startswith('seed') for a in fig.axes) == 4
    ms = model_selection_html(sel)
    n_fits = int(sel.table['finite'].sum())
    assert ms.count('restart') >= 2 * n_fits and f'Chosen K = {sel.k}' in ms
    page = metrics_html(dec, metrics=('f0',), runs=[0])
    assert page.count('<title>state ') == 3 and page.count('<polyline') == 1
    a = analyze_runs(frames(runs, truth), out=tmp_path / 'analysis', features=FEATS, ks=range(1, 5), restarts=2, n_jobs=1,
                     plot_metrics=('f0',))
    summary = json.loads((tmp_path / 'analysis' / 'summary.json').read_text())
    assert summary['k'] == 3 and summary['regression']['r2'] > 0.9 and (tmp_path / 'analysis' / 'training_map.html').exists()
    states = pd.read_csv(tmp_path / 'analysis' / 'states.csv')
    assert len(states) == sum(len(r) for r in runs) and set(states['latent_state']) == {0, 1, 2}


def test_selection_states_equal_viterbi_decoding(known):
    "fit_hmms keeps the chosen model's Viterbi paths (relabelled); they equal a fresh decode of the same runs."
    runs, truth, _ = known
    fs = frames(runs, truth)
    sel = fit_hmms(fs, FEATS, ks=range(1, 6), restarts=2, n_jobs=1, seed=0, n_iter=32)
    fresh, kept = decode(sel, fs), sel.decoded(fs)
    for a, b in zip(fresh, kept): assert a['latent_state'].tolist() == b['latent_state'].tolist()
    assert all((k['latent_state'] >= 0).all() for k in kept)
    sel.k = 4                                  # looking at another K gives that K's paths
    assert [s.tolist() for s in sel.states] == [sel.models[4].predict(x).tolist() for x in sel.data.arrays]


def test_analysis_decodes_and_zscores_each_run_once(monkeypatch, tmp_path):
    "analyze_runs: one batched Viterbi pass for every run and fitted K (for the renumbering), one z-scoring, one table."
    import hmmlearn.hmm
    import minitrain.hmm as hmm_module
    import minitrain.hmm_report as report_module
    calls = {'predict': 0, 'viterbi': 0, 'prepare': 0, 'dist': 0}
    predict, prepare, dist = hmmlearn.hmm.GaussianHMM.predict, hmm_module.prepare_runs, hmm_module.state_distributions
    def counting(name, f):
        def g(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        return g
    monkeypatch.setattr(hmmlearn.hmm.GaussianHMM, 'predict', counting('predict', predict))
    monkeypatch.setattr(hmm_module, 'prepare_runs', counting('prepare', prepare))
    monkeypatch.setattr(hmm_module, 'viterbi_paths', counting('viterbi', hmm_module.viterbi_paths))
    counted_dist = counting('dist', dist)
    monkeypatch.setattr(hmm_module, 'state_distributions', counted_dist)
    monkeypatch.setattr(report_module, 'state_distributions', counted_dist)
    runs, truth = sample_phase_runs(n_runs=8, seed=3)
    a = analyze_runs(frames(runs, truth), out=tmp_path, features=FEATS, ks=range(1, 4), restarts=2, n_jobs=1)
    assert calls == {'predict': 0, 'viterbi': 1, 'prepare': 1, 'dist': 1}
    assert [s.tolist() for s in a.selection.states] == [a.selection.model.predict(x).tolist() for x in a.selection.data.arrays]


def test_analyze_runs_reads_a_folder_of_the_original_codes_csvs(tmp_path):
    "modeling-training's layout: one CSV per seed, an unnamed index column, `step`, and eval_* losses and accuracies."
    from minitrain.weight_metrics import PAPER_METRICS
    runs, truth = sample_phase_runs(n_runs=12, length=100, seed=3)
    rng = np.random.default_rng(0)
    folder = tmp_path / 'modular_v3'
    folder.mkdir()
    feats = ['l1', 'l2', 'trace', 'spectral', 'var_w']
    for seed, (x, s) in enumerate(zip(runs, truth)):
        df = pd.DataFrame({m: rng.normal(size=len(x)) for m in PAPER_METRICS})
        df[feats] = x
        df['step'] = np.arange(len(x)) * 10
        df['train_loss'], df['eval_loss'] = 1.0 - 0.4 * s, 1.2 - 0.5 * s
        df['train_accuracy'], df['eval_accuracy'] = 0.3 + 0.35 * s, 0.2 + 0.4 * s   # above 0.9 in the last state
        df.to_csv(folder / f'lr0.001_adamw_seed{seed}_scaling1.0.csv')             # index written, as the original does
    a = analyze_runs(folder, features=feats, ks=range(1, 6), restarts=2, n_jobs=1)
    assert a.selection.k == 3
    assert [d.attrs['name'] for d in a.decoded] == sorted(f'lr0.001_adamw_seed{s}_scaling1.0' for s in range(12))
    by_name = {d.attrs['name']: d for d in a.decoded}
    pred = np.concatenate([by_name[f'lr0.001_adamw_seed{s}_scaling1.0']['latent_state'] for s in range(12)])
    assert adjusted_rand_score(np.concatenate(truth), pred) > 0.9
    assert a.regression is not None and a.regression.r2 > 0.5            # convergence read from eval_accuracy
    assert (folder / 'analysis' / 'training_map.html').exists()


def test_a_loss_missing_at_the_first_checkpoint_leaves_out_that_row_not_the_run(known):
    "A loss recorded before any training is NaN at checkpoint 0: the rest of the run is analysed, states aligned."
    runs, truth, _ = known
    dfs = frames(runs, truth)
    for df in dfs: df.loc[0, 'f0'] = np.nan
    with pytest.warns(RuntimeWarning, match='first 1 checkpoint'):
        sel = fit_hmms(dfs, FEATS, ks=[3], restarts=2, n_jobs=1, seed=0, n_iter=32)
    assert sel.data.dropped_runs == [] and all(len(x) == len(r) - 1 for x, r in zip(sel.data.arrays, runs))
    decoded = decode(sel, dfs)
    for d, t in zip(decoded, truth):
        assert d['latent_state'].iloc[0] == -1 and (d['latent_state'].to_numpy()[1:] == t[1:]).mean() > 0.95
