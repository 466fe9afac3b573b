"""Scientific check: do the latent states find grokking?

    python benchmarks/grokking_states.py [classic|small|paper] [folder]

Trains 8 seeds of a grokking preset (run_seeds, all cores; finished runs in the folder are reused), runs the HMM
analysis (diagonal covariances: with 8 runs of a few hundred checkpoints, full covariances over 14 correlated metrics
overfit and BIC picks a single state) and compares, run by run, the latent states with the jump in validation
accuracy: where it first reaches 0.5 (the middle of the jump) and 0.9 (its end, the paper's convergence time).

It prints, per run, the state changes, the entry into the final state and the transition nearest the jump; then the
issue's check (entry into the final state within 5 checkpoints of accuracy 0.9 in every run), how many runs have some
transition that close, the edges of the map with the mean convergence epoch of the runs that take them (the paper's
Fig. 2 table), the number of states, the convergence regression R^2 and the dissimilarity, beside the paper's numbers
for modular addition (p=113): 6 states by BIC, R^2 = 0.977.

Measured with `classic` (p=97; 2 cores, about 16 minutes to train): 4 states (initial, memorised, weight-norm
decline, final); R^2 0.990 (p 2e-4), rank correlation of entry and jump 0.90, dissimilarity 0.158. The issue's check
holds in 1/8 runs (entry minus jump: 10, -110, 330, 210, 240, 190, 280, 80 epochs); some transition lies within 5
checkpoints of the jump in 3/8. Runs that grok late enter the final state at the jump; runs that grok soon after
memorising jump near the *start* of the norm decline (1->2) and enter the final state when it ends. After the jump
the L2 norm relaxes exponentially to its new level with a time constant of 16 checkpoints (median; 12-34), close to
decoupled weight decay's 1/(lr * weight_decay) = 333 steps = 167 epochs at 2 steps an epoch. A state boundary where
the norm settles therefore lands one to three time constants after the jump, far outside a tolerance of 5
checkpoints; the paper's setting (lr 1e-3, 500 epochs = 50 checkpoints) is slower still.

Measured with `paper`, cut at 4,000 epochs (about 80 minutes): 2/8 runs reach 0.9 (epochs 3,350 and 3,370), one of
them enters its final state at the jump; Adam's loss spikes (eps 1e-8) make the states flip back and forth 8-18
times a run; 5 states, R^2 0.864 from the 2 converged runs. The full 10,000 epochs take about 3 hours for 8 seeds here.

Measured with `small` (the default preset, p=47; about 3 minutes): 3 states; the check holds in 4/8 runs, lags 360,
30, 0, 260, 50, 30, 340 epochs, one seed never reaches 0.9; R^2 0.727.
"""
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit
from scipy.stats import spearmanr

from minitrain.dynamics import run_seeds
from minitrain.hmm_report import analyze_runs
from minitrain.workloads import GrokkingPreset, make_grokking_learner

PRESETS = {'classic': GrokkingPreset.classic, 'small': GrokkingPreset, 'paper': GrokkingPreset.paper}
SEEDS = range(8)
TOLERANCE = 5   # checkpoints


def first_epoch(ep, acc, level):
    hit = np.where(acc >= level)[0]
    return int(ep[hit[0]]) if len(hit) else None


def relaxation_time(ep, l2, start, span=1000):
    "Time constant (epochs) of the weight norm's exponential approach to its new level after epoch `start`."
    keep = (ep >= start) & (ep <= start + span)
    t, y = ep[keep] - start, l2[keep]
    try:
        (_, _, tau), _ = curve_fit(lambda t, a, b, tau: a + b * np.exp(-t / tau), t, y, p0=(y[-1], y[0] - y[-1], span / 10))
    except (RuntimeError, ValueError): return None
    return float(tau) if 0 < tau < span else None


def main(preset='classic', folder=None):
    if preset not in PRESETS: sys.exit(f'unknown preset {preset!r}: choose one of {", ".join(PRESETS)}')
    folder = Path(folder or f'report/grokking_states_{preset}')
    pr = PRESETS[preset]()
    run_seeds(partial(make_grokking_learner, preset=pr), SEEDS, folder, epochs=pr.epochs, every=pr.every, n_jobs=None)
    report(folder)


def report(folder: Path) -> None:
    "Analyse the runs in `folder` and print how the states line up with each run's jump in validation accuracy."
    a = analyze_runs(folder, metric='valid_accuracy', threshold=0.9, covariance_type='diag', n_jobs=None)
    agree, near_ok, n = {0.5: 0, 0.9: 0}, 0, len(a.decoded)
    entries, jumps, taus, edge_runs = [], [], [], defaultdict(list)
    print(f"{'run':<7}{'state changes (state>state@epoch)':<44}{'enters final':>13}{'acc>=0.5':>9}{'acc>=0.9':>9}"
          f"  nearest to 0.9")
    for run in a.decoded:
        every = run.attrs['meta']['every']   # checkpoint spacing, as recorded with the run
        s, ep, acc = run['latent_state'].to_numpy(), run['epoch'].to_numpy(), run['valid_accuracy'].to_numpy()
        change, first = np.where(s[1:] != s[:-1])[0] + 1, {}
        enter = int(ep[change[-1]]) if len(change) else int(ep[0])
        marks = {lvl: first_epoch(ep, acc, lvl) for lvl in agree}
        for lvl, e in marks.items():
            if e is not None and abs(enter - e) <= TOLERANCE * every: agree[lvl] += 1
        nearest = '-'
        if marks[0.9] is not None:
            entries.append(enter); jumps.append(marks[0.9])
            tau = relaxation_time(ep, run['l2'].to_numpy(), marks[0.9])
            if tau is not None: taus.append(tau / every)
            if len(change):
                c = change[np.argmin(np.abs(ep[change] - marks[0.9]))]
                lag = int(ep[c]) - marks[0.9]
                near_ok += abs(lag) <= TOLERANCE * every
                nearest = f'{s[c - 1]}>{s[c]} ({lag:+d} epochs)'
        for c in change[::-1]: first[(s[c - 1], s[c])] = int(ep[c])   # first time this run takes each edge
        for edge, t in first.items(): edge_runs[edge].append((t, marks[0.9]))
        path = ' '.join(f'{s[c - 1]}>{s[c]}@{ep[c]}' for c in change)
        print(f"{run.attrs['name']:<7}{path:<44}{enter:>13}{str(marks[0.5]):>9}{str(marks[0.9]):>9}  {nearest}")
    for lvl, k in agree.items():
        print(f"entry into the final state within {TOLERANCE} checkpoints of validation accuracy reaching {lvl}: {k}/{n} runs")
    print(f"some state transition within {TOLERANCE} checkpoints of validation accuracy reaching 0.9: {near_ok}/{n} runs")
    if len(jumps) > 2:
        lag = np.array(entries) - np.array(jumps)
        rho = spearmanr(entries, jumps).statistic
        print(f"runs reaching 0.9: entry minus jump {', '.join(map(str, lag))} epochs (median {np.median(lag):.0f}); "
              f"rank correlation of entry and jump epochs over runs: {rho:.2f}")
    if taus:
        print(f"after the jump the L2 norm relaxes to its new level with time constant {np.median(taus):.0f} "
              f"checkpoints (range {min(taus):.0f}-{max(taus):.0f}; exponential fit over 1,000 epochs), against a tolerance of {TOLERANCE}")
    print('edges (as in the paper\'s map): runs taking it, mean epoch of the transition, mean convergence epoch of those runs')
    for (i, j), hits in sorted(edge_runs.items()):
        conv = [c for _, c in hits if c is not None]
        line = f"  {i}>{j}: {len(hits)}/{n} runs, transition at epoch {np.mean([t for t, _ in hits]):.0f}"
        if conv: line += f", convergence at {np.mean(conv):.0f}"
        if len(conv) < len(hits): line += f", {len(hits) - len(conv)} never reach 0.9"
        print(line)
    print(f"states chosen by BIC: {a.selection.k} (paper, p=113: 6)")
    reg = a.regression
    if reg is not None:
        print(f"convergence-time regression R^2: {reg.r2:.3f}, p = {reg.p_value:.3g} (paper: 0.977); detour states: {reg.detours}")
    print(f"trajectory dissimilarity (total variation, label-free): {a.dissimilarity:.3f}")
    print(f"analysis written to {a.out}")


if __name__ == '__main__':
    main(*sys.argv[1:])
