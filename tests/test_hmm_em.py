"""The batched torch EM engine against hmmlearn: from the same starting point, the same log-likelihood after every
iteration (1e-8 relative) and the same parameters (1e-6), for every covariance type, several models at once."""
import math

import numpy as np
import pytest
import torch
from hmmlearn.hmm import GaussianHMM
from sklearn.metrics import adjusted_rand_score

from minitrain.hmm import _fit_seed, fit_hmms, prepare_runs, sample_phase_runs
from minitrain.hmm_em import HMMBatch, fit_em, fit_hmm_batch, initial_hmms, pad_runs, to_hmmlearn, viterbi_paths

FEATS = [f'f{i}' for i in range(5)]
TYPES = ['full', 'diag', 'spherical', 'tied']


@pytest.fixture(scope='module')
def arrays():
    runs, truth = sample_phase_runs(n_runs=8, length=90, seed=4)
    arrays = prepare_runs(runs, FEATS).arrays
    arrays[3], arrays[5] = arrays[3][:70], arrays[5][:55]      # runs of different lengths: padding is exercised
    return arrays


def hmmlearn_start(arrays, k, covariance_type, seed=0):
    "hmmlearn's own initialisation (k-means means, data covariance), with a sticky transition matrix."
    X, lengths = np.concatenate(arrays), [len(a) for a in arrays]
    m = GaussianHMM(k, covariance_type, init_params='mc', random_state=seed)
    m.startprob_, m.transmat_ = np.full(k, 1 / k), np.full((k, k), 0.05 / max(k - 1, 1)) + np.eye(k) * (0.95 - 0.05 / max(k - 1, 1))
    m._init(X, lengths)
    return m


def own_covars(m):
    "A model's covariances in the shape its type stores them ((K,) spherical, (K, d) diag, (d, d) tied, (K, d, d) full)."
    c = np.asarray(m._covars_)
    return c.reshape(m.n_components, -1)[:, 0] if m.covariance_type == 'spherical' else c


def batch_of(models, covariance_type):
    "hmmlearn models as one padded HMMBatch."
    K, d = max(m.n_components for m in models), models[0].means_.shape[1]
    F = len(models)
    sp, tm, mu = torch.zeros(F, K, dtype=torch.float64), torch.zeros(F, K, K, dtype=torch.float64), torch.zeros(F, K, d, dtype=torch.float64)
    cov = {'full': torch.eye(d, dtype=torch.float64).repeat(F, K, 1, 1), 'tied': torch.zeros(F, d, d, dtype=torch.float64),
           'diag': torch.ones(F, K, d, dtype=torch.float64), 'spherical': torch.ones(F, K, d, dtype=torch.float64)}[covariance_type]
    for f, m in enumerate(models):
        k = m.n_components
        sp[f, :k], tm[f, :k, :k], mu[f, :k] = (torch.tensor(a) for a in (m.startprob_, m.transmat_, m.means_))
        c = torch.tensor(m._covars_)
        if covariance_type == 'tied': cov[f] = c
        elif covariance_type == 'spherical': cov[f, :k] = c.reshape(k, -1).expand(k, d) if c.numel() == k * d else c[:, None].expand(k, d)
        else: cov[f, :k] = c
    return HMMBatch(sp, tm, mu, cov, torch.tensor([m.n_components for m in models]), covariance_type)


@pytest.mark.parametrize('covariance_type', TYPES)
def test_every_iteration_equals_hmmlearns_from_the_same_start(arrays, covariance_type):
    X, lengths = np.concatenate(arrays), [len(a) for a in arrays]
    starts = [hmmlearn_start(arrays, k, covariance_type, seed=k) for k in (2, 3, 4)]   # three models in one batch
    ours = fit_em(pad_runs(arrays), batch_of(starts, covariance_type), n_iter=10, tol=-math.inf)
    for f, start in enumerate(starts):
        ref = GaussianHMM(start.n_components, covariance_type, init_params='', n_iter=10, tol=-math.inf)
        ref.startprob_, ref.transmat_, ref.means_ = start.startprob_, start.transmat_, start.means_
        ref.covars_ = own_covars(start)
        ref.fit(X, lengths)
        theirs = list(ref.monitor_.history)
        assert len(ours.history[f]) == len(theirs) == 10 and ours.error[f] is None
        np.testing.assert_allclose(ours.history[f], theirs, rtol=1e-8)
        back = to_hmmlearn(ours.hmm, f, ours)
        for name in ('startprob_', 'transmat_', 'means_'):
            np.testing.assert_allclose(getattr(back, name), getattr(ref, name), rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(own_covars(back), own_covars(ref), rtol=1e-6, atol=1e-9)


def test_the_convergence_rule_is_hmmlearns(arrays):
    X, lengths = np.concatenate(arrays), [len(a) for a in arrays]
    start = hmmlearn_start(arrays, 3, 'diag')
    ours = fit_em(pad_runs(arrays), batch_of([start], 'diag'), n_iter=100, tol=1e-2)
    ref = GaussianHMM(3, 'diag', init_params='', n_iter=100, tol=1e-2)
    ref.startprob_, ref.transmat_, ref.means_, ref.covars_ = start.startprob_, start.transmat_, start.means_, own_covars(start)
    ref.fit(X, lengths)
    assert ours.n_iter[0] == ref.monitor_.iter < 100 and ours.converged[0] == ref.monitor_.converged is True
    np.testing.assert_allclose(ours.history[0], list(ref.monitor_.history), rtol=1e-8)


@pytest.mark.parametrize('covariance_type', TYPES)
def test_held_out_scores_and_bic_are_hmmlearns_of_the_returned_model(arrays, covariance_type):
    train, test = arrays[:6], arrays[6:]
    Xt, Lt = np.concatenate(test), [len(a) for a in test]
    res = fit_hmm_batch(train, test, [1, 2, 3], [(0, k, 0) for k in (1, 2, 3)], covariance_type, n_iter=30)
    for r in res:
        assert r['model'] is not None and r['model'].n_components == r['k']
        assert r['test_loglik'] == pytest.approx(r['model'].score(Xt, Lt), rel=1e-9)
        assert r['bic'] == pytest.approx(r['model'].bic(Xt, Lt), rel=1e-9)
        assert r['aic'] == pytest.approx(r['model'].aic(Xt, Lt), rel=1e-9)
        assert r['train_loglik'] == pytest.approx(r['model'].score(np.concatenate(train), [len(a) for a in train]), rel=1e-9)


def test_random_starts_are_hmmlearns_draws_for_the_same_seed(arrays):
    hmm = initial_hmms(pad_runs(arrays), [3], [(7, 3, 1)], 'diag', init='random')
    ref = GaussianHMM(3, 'diag', random_state=_fit_seed(7, 3, 1))
    ref._init(np.concatenate(arrays), [len(a) for a in arrays])
    np.testing.assert_allclose(hmm.startprob[0].numpy(), ref.startprob_, rtol=1e-12)
    np.testing.assert_allclose(hmm.transmat[0].numpy(), ref.transmat_, rtol=1e-12)
    np.testing.assert_allclose(hmm.covars[0].numpy(), ref._covars_, rtol=1e-12)   # the data's covariance + min_covar


def test_both_engines_recover_a_known_hmm():
    runs, truth = sample_phase_runs(n_runs=16, seed=0)
    for engine in ('torch', 'hmmlearn'):
        sel = fit_hmms(runs, FEATS, ks=range(1, 5), restarts=2, n_jobs=1, seed=0, n_iter=32, engine=engine)
        assert sel.k == 3, engine
        pred = np.concatenate(sel.states)
        assert adjusted_rand_score(np.concatenate(truth), pred) > 0.9, engine
    with pytest.raises(ValueError, match="engine must be 'torch' or 'hmmlearn'"): fit_hmms(runs, FEATS, engine='jax')


def test_spherical_models_from_either_engine_hold_one_variance_per_state():
    "hmmlearn 0.3 keeps a spherical model it fitted as (k, d), so its covars_ comes out (k*d, d, d); ours are (k,)."
    runs, _ = sample_phase_runs(n_runs=8, seed=0)
    for engine in ('torch', 'hmmlearn'):
        sel = fit_hmms(runs, FEATS, ks=[3], restarts=1, n_jobs=1, n_iter=8, engine=engine, covariance_type='spherical')
        m = sel.model
        assert np.asarray(m._covars_).shape == (3,) and m.covars_.shape == (3, 5, 5), engine
        assert all(np.allclose(c, c[0, 0] * np.eye(5)) for c in m.covars_), engine


def test_a_covariance_that_cannot_be_inverted_fails_that_model_only(arrays):
    start = [hmmlearn_start(arrays, 2, 'full'), hmmlearn_start(arrays, 2, 'full', seed=3)]
    batch = batch_of(start, 'full')
    batch.covars[0, 1] = torch.zeros(5, 5, dtype=torch.float64)               # a state collapsed: no density
    fit = fit_em(pad_runs(arrays), batch, n_iter=5, tol=-math.inf)
    assert 'positive-definite' in fit.error[0] and fit.error[1] is None and len(fit.history[1]) == 5


def test_batched_viterbi_paths_are_hmmlearns_predict(arrays):
    "One batch of fitted models of every covariance type and several K decodes runs of different lengths as hmmlearn does."
    X, lengths = np.concatenate(arrays), [len(a) for a in arrays]
    models = [GaussianHMM(k, ct, n_iter=8, random_state=k).fit(X, lengths) for ct, k in zip(TYPES, (4, 2, 3, 1))]
    paths = viterbi_paths(models, arrays)
    for m, per_run in zip(models, paths):
        assert [p.tolist() for p in per_run] == [m.predict(x).tolist() for x in arrays]
    assert len(set(paths[0][0].tolist())) > 1                                   # not a trivial path
