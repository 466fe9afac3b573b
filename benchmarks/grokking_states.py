"""Scientific check: do the latent states find grokking?

Trains the small grokking preset over 8 seeds (run_seeds, all cores; runs already in the folder are reused), runs the
HMM analysis, and for each run compares the checkpoint where it enters its final state with its jump in validation
accuracy (the first checkpoint at or above 0.5, the middle of the jump). Prints the agreement, the number of states,
the convergence regression R^2 and the dissimilarity beside the paper's numbers for modular addition (p=113):
6 states by BIC, R^2 = 0.977.
"""
import sys
from functools import partial
from pathlib import Path

import numpy as np

from minitrain.dynamics import run_seeds
from minitrain.hmm_report import analyze_runs
from minitrain.workloads import GrokkingPreset, make_grokking_learner

SEEDS = range(8)
TOLERANCE = 5   # checkpoints


def main(folder='report/grokking_states'):
    folder = Path(folder)
    preset = GrokkingPreset()
    run_seeds(partial(make_grokking_learner, preset=preset), SEEDS, folder, epochs=preset.epochs, every=preset.every,
              n_jobs=None)
    a = analyze_runs(folder, metric='valid_accuracy', threshold=0.9, n_jobs=None)
    every = preset.every
    agree = []
    print(f"{'run':<8}{'enters final state':>20}{'valid acc >= 0.5':>18}{'difference (checkpoints)':>27}")
    for run in a.decoded:
        s, ep, acc = run['latent_state'].to_numpy(), run['epoch'].to_numpy(), run['eval_accuracy'].to_numpy()
        final = s[-1]
        change = np.where(s[1:] != s[:-1])[0]
        enter = ep[change[-1] + 1] if len(change) else ep[0]
        jump = np.where(acc >= 0.5)[0]
        jump_ep = ep[jump[0]] if len(jump) else None
        diff = None if jump_ep is None else (enter - jump_ep) / every
        agree.append(diff is not None and abs(diff) <= TOLERANCE)
        print(f"{run.attrs['name']:<8}{enter:>20}{str(jump_ep):>18}{str(diff):>27}")
    reg = a.regression
    print(f"runs whose entry into the final state is within {TOLERANCE} checkpoints of the jump: {sum(agree)}/{len(agree)}")
    print(f"states chosen by BIC: {a.selection.k} (paper, p=113: 6)")
    if reg is not None:
        print(f"convergence-time regression R^2: {reg.r2:.3f}, p = {reg.p_value:.3g} (paper: 0.977); detour states: {reg.detours}")
    print(f"trajectory dissimilarity (total variation, label-free): {a.dissimilarity:.3f}")
    print(f"analysis written to {a.out}")


if __name__ == '__main__':
    main(*sys.argv[1:])
