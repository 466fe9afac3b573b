"""Model-selection speed: K = 1..8, 5 restarts, full covariance, n_iter 32, on 40 synthetic runs x 1000 checkpoints x
14 features (four phases shared by all runs). Prints the wall time of fit_hmms with n_jobs=1 and with all cores, and
the ratio to the original procedure's sequential loop (hmmlearn's default initialisation, one fit after another).
Goal: under 2 minutes on 2 cores. The original procedure measured 144-166 s here.
"""
import os
import time
import warnings

import numpy as np

from minitrain.hmm import fit_hmms, prepare_runs, sample_phase_runs

N_RUNS, LENGTH, D, KS, RESTARTS, N_ITER = 40, 1000, 14, range(1, 9), 5, 32


def data():
    rng = np.random.default_rng(0)
    means = np.cumsum(1.5 * rng.standard_normal((4, D)), axis=0)
    runs, _ = sample_phase_runs(N_RUNS, LENGTH, D, means=means, noise=1.0, durations=(100, 350), seed=0)
    return runs


def original_loop(runs):
    "The original procedure: z-score per run, 80/20 split, every K x restart fitted one after another, default init."
    from hmmlearn.hmm import GaussianHMM
    from threadpoolctl import threadpool_limits
    arrays = prepare_runs(runs, [f'f{i}' for i in range(D)]).arrays
    order = np.random.default_rng(0).permutation(len(arrays))
    test, train = [arrays[i] for i in order[:8]], [arrays[i] for i in order[8:]]
    X, L = np.concatenate(train), [len(a) for a in train]
    Xt, Lt = np.concatenate(test), [len(a) for a in test]
    bics = {}
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for k in KS:
            for r in range(RESTARTS):
                m = GaussianHMM(n_components=k, covariance_type='full', n_iter=N_ITER, random_state=r).fit(X, L)
                bics.setdefault(k, []).append(m.bic(Xt, Lt))
    return min(bics, key=lambda k: np.mean(bics[k]))


def main():
    runs = data()
    feats = [f'f{i}' for i in range(D)]
    t = time.perf_counter(); k_orig = original_loop(runs); t_orig = time.perf_counter() - t
    print(f"original procedure (sequential, default init): {t_orig:.1f} s, K = {k_orig}")
    t = time.perf_counter()
    sel1 = fit_hmms(runs, feats, KS, RESTARTS, n_jobs=1, n_iter=N_ITER)
    t1 = time.perf_counter() - t
    print(f"fit_hmms n_jobs=1: {t1:.1f} s, K = {sel1.k}   ratio to original {t1 / t_orig:.2f}x")
    t = time.perf_counter()
    seln = fit_hmms(runs, feats, KS, RESTARTS, n_jobs=None, n_iter=N_ITER)
    tn = time.perf_counter() - t
    print(f"fit_hmms n_jobs={os.cpu_count()} (all cores): {tn:.1f} s, K = {seln.k}   ratio to original {tn / t_orig:.2f}x"
          f"  (goal < 120 s on 2 cores)")
    print(f"true number of phases: 4")


if __name__ == '__main__':
    main()
