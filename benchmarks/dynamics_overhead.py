"""Cost of collecting training dynamics, on the paper's modular-addition transformer (p=113, d_model 128, 4 heads,
d_mlp 512, batch 2048, AdamW).

1. Training with TrainingDynamicsCB (all metrics every 10 epochs, rows written to disk, checkpoint saved) against the
   same training without it, same process, interleaved, median of 3. Goal: at most 1.10x.
2. weight_metrics against a straightforward per-matrix loop in the style of the original code (torch.svd per matrix,
   statistics one after another). Goal: at least 2x faster.
"""
import statistics
import tempfile
import time

import torch
from _timing import median_time

from minitrain.callbacks import set_seed
from minitrain.dynamics import TrainingDynamicsCB
from minitrain.weight_metrics import collect_weights, weight_metrics
from minitrain.workloads import GrokkingPreset, make_grokking_learner

EPOCHS, EVERY, REPEATS = 30, 10, 3
PAPER = GrokkingPreset.paper()


def fit_time(collect: bool) -> float:
    set_seed(0)
    learn = make_grokking_learner(0, PAPER)
    with tempfile.TemporaryDirectory() as d:
        cbs = [TrainingDynamicsCB(every=EVERY, path=d)] if collect else []
        t = time.perf_counter()
        learn.fit(EPOCHS, cbs=cbs)
        return time.perf_counter() - t


def naive_metrics(model):
    "Per matrix, one after another, with a full torch.svd: the straightforward loop of the original code."
    g = collect_weights(model)
    stats = {k: [] for k in ('l1', 'l2', 'cs', 'trace', 'spectral', 'comp', 'mean_s', 'var_s')}
    for w in g.matrices:
        w = w.float()
        s = torch.svd(w)[1]
        stats['l1'].append(torch.linalg.vector_norm(w.flatten(), 1).item())
        stats['l2'].append(torch.linalg.vector_norm(w.flatten(), 2).item())
        stats['cs'].append(stats['l1'][-1] / stats['l2'][-1])
        stats['trace'].append(torch.trace(w).item())
        stats['spectral'].append(s[0].item())
        stats['comp'].append(stats['trace'][-1] / stats['spectral'][-1])
        s = torch.where(s < 1e-5, torch.zeros_like(s), s)
        stats['mean_s'].append(s.mean().item())
        stats['var_s'].append(s.var().item())
    ws = torch.cat([w.flatten() for w in g.matrices + g.kernels + g.others])
    bs = torch.cat([b.flatten() for b in g.biases])
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out.update(mean_w=ws.mean().item(), median_w=ws.median().item(), var_w=ws.var().item(),
               mean_b=bs.mean().item(), median_b=bs.median().item(), var_b=bs.var().item())
    return out


def main():
    fit_time(False)   # warm up
    times = {False: [], True: []}
    for _ in range(REPEATS):
        for collect in (False, True): times[collect].append(fit_time(collect))
    base, coll = statistics.median(times[False]), statistics.median(times[True])
    print(f"paper transformer, {EPOCHS} epochs: {base:.2f} s without, {coll:.2f} s with metrics every {EVERY} epochs")
    print(f"ratio with / without collection: {coll / base:.3f}x  (goal <= 1.10x)")

    set_seed(0)
    model = make_grokking_learner(0, PAPER).model
    ours = median_time(lambda: weight_metrics(model))
    naive = median_time(lambda: naive_metrics(model))
    m, n = weight_metrics(model), naive_metrics(model)
    assert abs(m['spectral'] - n['spectral']) < 1e-4 * abs(n['spectral']), (m['spectral'], n['spectral'])
    print(f"weight_metrics (19 metrics, batched per shape): {ours * 1000:.1f} ms; per-matrix torch.svd loop (14 metrics): "
          f"{naive * 1000:.1f} ms")
    print(f"speed-up over the per-matrix loop: {naive / ours:.2f}x  (goal >= 2x)")


if __name__ == '__main__':
    main()
