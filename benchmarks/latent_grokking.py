"""Live latent states on grokking: how early does LatentStateCB see the memorisation phase end?

Six seeds of `GrokkingPreset.quick()` are trained and analysed with pooled normalisation (so that a new run can be
followed live) and diagonal covariances (with full ones BIC keeps 2 states, which do not separate memorisation); a
seventh seed is then trained with `LatentStateCB` following it. Printed, as measured: the memorisation state (the
state the runs are in when they fit their training split but not yet the held-out one), the epoch of the jump (valid
accuracy first >= 0.9), and how many epochs before the jump the filtered probability of leaving the memorisation state
first passes 0.5 (or that it never does, with its largest value), and the estimated time to convergence at a few
points of the run against the truth.

    python benchmarks/latent_grokking.py      # about two minutes on 2 cores
"""
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from minitrain.dynamics import run_seeds
from minitrain.dynamics_cb import TrainingDynamicsCB
from minitrain.hmm_report import analyze_runs
from minitrain.latent import LatentStateCB
from minitrain.metrics import MetricsCB
from minitrain.seed import set_seed
from minitrain.workloads import GrokkingPreset, make_grokking_learner

EVERY = 10


def main():
    preset = GrokkingPreset.quick()
    root = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    run_seeds(partial(make_grokking_learner, preset=preset), range(6), root / 'runs', epochs=preset.epochs, every=EVERY, n_jobs=None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        a = analyze_runs(root / 'runs', out=root / 'analysis', ks=range(2, 7), restarts=3, normalize='pooled',
                         covariance_type='diag')
    print(f"trained and analysed 6 seeds in {time.perf_counter() - t:.0f} s: {a.selection.k} states")
    rows = pd.concat(a.decoded)
    memorising = rows[(rows['train_accuracy'] >= 0.9) & (rows['valid_accuracy'] < 0.5)]
    state = int(memorising['latent_state'].mode()[0])
    print(f"memorisation state: {state} ({len(memorising)} checkpoints of the analysed runs fit train but not valid)")

    set_seed(6)
    learn = make_grokking_learner(6, preset)
    for cb in learn.cbs:
        if isinstance(cb, MetricsCB): cb.log = False          # 3,600 metric rows: not printed
    dyn = TrainingDynamicsCB(every=EVERY)
    live = LatentStateCB(root / 'analysis')
    learn.fit(preset.epochs, cbs=[dyn, live])
    track = pd.DataFrame(live.history)
    changes = track[track['latent_state'].diff().fillna(1) != 0]
    print('filtered state of the seventh seed, from epoch: ' + ', '.join(f"{int(r.epoch)}: {int(r.latent_state)}" for r in changes.itertuples()))
    curve = dyn.dataframe()
    jump = curve.loc[curve['valid_accuracy'] >= 0.9, 'epoch']
    if jump.empty:
        print('the seventh seed did not grok within the preset\'s epochs: nothing to time'); return
    jump = int(jump.iloc[0])
    in_state = track[track['latent_state'] == state]
    passed = in_state[in_state['latent_p_leave'] > 0.5]
    if len(passed):
        print(f"jump at epoch {jump}; P(leaving the memorisation state) first passed 0.5 at epoch {int(passed['epoch'].iloc[0])}, "
              f"{jump - int(passed['epoch'].iloc[0])} epochs before the jump")
    else:
        top = in_state.loc[in_state['latent_p_leave'].idxmax()] if len(in_state) else None
        print(f"jump at epoch {jump}; P(leaving the memorisation state) never passed 0.5 while in it"
              + (f" (largest {top['latent_p_leave']:.3f} at epoch {int(top['epoch'])})" if top is not None else ''))
        left = track[(track['latent_state'] != state) & (track['epoch'] > (in_state['epoch'].min() if len(in_state) else 0))]
        if len(left): print(f"the filtered state left it at epoch {int(left['epoch'].iloc[0])} ({jump - int(left['epoch'].iloc[0])} epochs before the jump)")
    for frac in (0.25, 0.5, 0.75):
        row = track.iloc[min(int(frac * len(track[track['epoch'] < jump])), len(track) - 1)]
        print(f"at epoch {int(row['epoch'])}: state {int(row['latent_state'])}, converges in {row['converge_in']:.0f} epochs "
              f"({row['converge_in_lo']:.0f}-{row['converge_in_hi']:.0f}); truth {jump - int(row['epoch'])}")


if __name__ == '__main__':
    main()
