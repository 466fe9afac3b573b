"""Model-selection speed: `fit_hmms` (torch engine, and hmmlearn engine) against the original procedure's sequential
loop of hmmlearn fits (default initialisation, one fit after another), measured in the same run.

Cases (full covariance, n_iter 32, 14 features, synthetic runs with four phases shared by all runs):
  A  40 runs x 1,000 checkpoints, K = 1..8 x 5 restarts   (goal: >= 10x the original procedure on 2 cores)
  B  20 runs x 500 checkpoints,   K = 1..4 x 3 restarts   (goal: >= 10x: no fixed cost that dwarfs a small analysis)
  C  the paper's scale, 40 runs x 10,000 checkpoints, K = 1..8 x 5 restarts: fit_hmms timed; the original procedure
     estimated from a subset (one restart of each K, times the restarts).
On a GPU the torch engine runs there (float64); the original procedure always runs on the CPU.

    python benchmarks/hmm_selection.py          # A and B (several minutes: the original procedure is slow)
    python benchmarks/hmm_selection.py --paper  # also C
"""
import argparse
import os
import time
import warnings

import numpy as np
import torch

from minitrain.hmm import fit_hmms, prepare_runs, sample_phase_runs

D, N_ITER = 14, 32


def data(n_runs, length, seed=0):
    rng = np.random.default_rng(seed)
    means = np.cumsum(1.5 * rng.standard_normal((4, D)), axis=0)
    runs, _ = sample_phase_runs(n_runs, length, D, means=means, noise=1.0, durations=(length // 10, length * 7 // 20),
                                seed=seed)
    return runs


def original_loop(runs, ks, restarts, n_test):
    "The original procedure: z-score per run, 80/20 split, every K x restart fitted one after another, default init."
    from hmmlearn.hmm import GaussianHMM
    from threadpoolctl import threadpool_limits
    arrays = prepare_runs(runs, [f'f{i}' for i in range(D)]).arrays
    order = np.random.default_rng(0).permutation(len(arrays))
    test, train = [arrays[i] for i in order[:n_test]], [arrays[i] for i in order[n_test:]]
    X, L = np.concatenate(train), [len(a) for a in train]
    Xt, Lt = np.concatenate(test), [len(a) for a in test]
    bics = {}
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for k in ks:
            for r in range(restarts):
                m = GaussianHMM(n_components=k, covariance_type='full', n_iter=N_ITER, random_state=r).fit(X, L)
                bics.setdefault(k, []).append(m.bic(Xt, Lt))
    return min(bics, key=lambda k: np.mean(bics[k]))


def timed(f):
    t = time.perf_counter()
    out = f()
    return time.perf_counter() - t, out


def case(name, n_runs, length, ks, restarts, hmmlearn_engine=True):
    runs = data(n_runs, length)
    feats = [f'f{i}' for i in range(D)]
    t_orig, k_orig = timed(lambda: original_loop(runs, ks, restarts, round(0.2 * n_runs)))
    print(f"{name}: original procedure (sequential hmmlearn, default init): {t_orig:.1f} s, K = {k_orig}")
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        t_torch, sel = timed(lambda: fit_hmms(runs, feats, ks, restarts, n_jobs=None, n_iter=N_ITER))
        print(f"{name}: fit_hmms, torch engine ({'GPU' if torch.cuda.is_available() else f'{os.cpu_count()} CPU threads'}): "
              f"{t_torch:.2f} s, K = {sel.k}   {t_orig / t_torch:.1f}x faster than the original (goal >= 10x)")
        if hmmlearn_engine:
            t_h, sel_h = timed(lambda: fit_hmms(runs, feats, ks, restarts, n_jobs=None, n_iter=N_ITER, engine='hmmlearn'))
            print(f"{name}: fit_hmms, hmmlearn engine ({os.cpu_count()} worker processes): {t_h:.1f} s, K = {sel_h.k}   "
                  f"{t_orig / t_h:.1f}x")


def paper_scale():
    runs = data(40, 10_000)
    feats = [f'f{i}' for i in range(D)]
    ks = range(1, 9)
    t_sub, _ = timed(lambda: original_loop(runs, ks, 1, 8))    # one restart of each K
    estimate = 5 * t_sub
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        t_torch, sel = timed(lambda: fit_hmms(runs, feats, ks, 5, n_jobs=None, n_iter=N_ITER))
    print(f"C (40 x 10,000 x 14, K 1..8 x 5): original procedure estimated {estimate / 60:.1f} min (one restart of each K "
          f"took {t_sub:.0f} s); fit_hmms torch engine {t_torch:.1f} s, K = {sel.k}   {estimate / t_torch:.1f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--paper', action='store_true', help="also the paper's scale (40 x 10,000), about 15 minutes")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, "
          f"{os.cpu_count()} cores; true number of phases: 4")
    case('B (20 x 500 x 14, K 1..4 x 3)', 20, 500, range(1, 5), 3)
    case('A (40 x 1,000 x 14, K 1..8 x 5)', 40, 1000, range(1, 9), 5)
    if args.paper: paper_scale()


if __name__ == '__main__':
    main()
