"""The minitrain demo: trains on built-in data (no download) and writes figures and tables into a report folder.

Run with `make demo`. Each part is one function; later parts of minitrain add theirs to PARTS.
"""
import argparse
import csv
import logging
import time
from functools import partial
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minitrain import (CNN, DeviceCB, MetricsCB, MulticlassAccuracy, OneCycleCB, ProgressCB, TrainLearner, digits,
                       set_seed)

log = logging.getLogger('minitrain.demo')


def write_table(rows: list[dict], out: Path, name: str) -> None:
    "Write history rows as CSV and as a Markdown table."
    with open(out / f'{name}.csv', 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader(); w.writerows(rows)
    fmt = lambda v: f'{v:.4f}' if isinstance(v, float) else str(v)
    lines = ['| ' + ' | '.join(rows[0]) + ' |', '|' + '---|' * len(rows[0])]
    lines += ['| ' + ' | '.join(fmt(v) for v in r.values()) + ' |' for r in rows]
    (out / f'{name}.md').write_text('\n'.join(lines) + '\n')


def sgd_momentum(params, lr): return torch.optim.SGD(params, lr, momentum=0.9)


def part_backbone(out: Path) -> None:
    "A small CNN on scikit-learn's digits: metrics, progress bar, loss graph and metrics table."
    set_seed(0)
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    progress = ProgressCB(plot=True, save_path=out / 'loss.png')
    learn = TrainLearner(CNN(), digits(bs=64), F.cross_entropy, lr=0.1, opt_func=sgd_momentum,
                         cbs=[DeviceCB(), metrics, progress], path=out)
    learn.fit(15, cbs=[OneCycleCB(max_lr=0.2)])
    write_table(metrics.history, out, 'metrics')
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    progress.plot_loss(ax=ax[0])
    for phase in ('train', 'valid'):
        rows = [r for r in metrics.history if r['phase'] == phase]
        ax[1].plot([r['epoch'] for r in rows], [r['accuracy'] for r in rows], 'o-', label=phase)
    ax[1].set_xlabel('epoch'); ax[1].set_ylabel('accuracy'); ax[1].legend()
    fig.suptitle('CNN on digits'); fig.savefig(out / 'loss_accuracy.png', dpi=100, bbox_inches='tight'); plt.close(fig)
    log.info('digits CNN: valid accuracy %.3f after %d epochs', metrics.last()['accuracy'], learn.epoch)


def part_hooks(out: Path) -> None:
    "Activation statistics of the digits CNN at a too-high (0.4) and a sensible (0.1) learning rate."
    from minitrain.hooks import StoreModuleStatsCB
    for lr, name in ((0.4, "too_high"), (0.1, "sensible")):
        set_seed(42)
        model = CNN()
        stats = StoreModuleStatsCB(mods=model.layers)
        metrics = MetricsCB(accuracy=MulticlassAccuracy())
        TrainLearner(model, digits(bs=64), F.cross_entropy, lr=lr, opt_func=sgd_momentum,
                     cbs=[DeviceCB(), metrics, stats]).fit(10)
        title = f'lr={lr}: valid accuracy {metrics.last()["accuracy"]:.2f}'
        for kind, plot in (('mean_std', stats.mean_std_plot), ('hist', stats.hist_plot), ('dead', stats.dead_chart)):
            fig = plot()
            fig.suptitle(f'{kind}, {title}', y=1.03)
            fig.savefig(out / f'activations_{name}_{kind}.png', dpi=100, bbox_inches='tight')
            plt.close(fig)
        log.info('activation stats at lr=%s: %s', lr, title)


def part_probmaps(out: Path) -> None:
    "Class-probability maps of train-viz's 2-8-16-8-7 network on its seven-class blobs: two GIFs and a contact sheet."
    from torch import nn
    from minitrain import DataLoaders, TensorLoader
    from minitrain.probmaps import ProbMapCB, map_grid, seven_class_blobs
    set_seed(0)
    x, y = seven_class_blobs()
    xv, yv = seven_class_blobs(seed=1)
    dls = DataLoaders(TensorLoader(x, y, bs=32, shuffle=True), TensorLoader(xv, yv, bs=128))
    net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                        nn.Linear(8, 7))
    cb = ProbMapCB(xlim=(-3, 15), ylim=(-5, 14), resolution=150, every=4)
    metrics = MetricsCB(accuracy=MulticlassAccuracy())
    TrainLearner(net, dls, F.cross_entropy, lr=0.01, opt_func=sgd_momentum, cbs=[metrics, cb]).fit(160)
    log.info('seven blobs: valid accuracy %.3f, %d snapshots of %d bytes each', metrics.last()['accuracy'],
             len(cb.snapshots), cb.bytes_per_snapshot)
    for mode in ('region', 'boundary'):
        cb.animate(out / f'probmap_{mode}.gif', map_type=mode, interpolation_factor=2, frame_interval=60)
    names = [f'{c}' for c in 'ABCDEFG']
    fig = map_grid(cb.maps('region'), epochs=[0, 8, 20, 40, 80, 160], ncols=3, points=(x, y), class_names=names)
    fig.savefig(out / 'probmap_contact_sheet.png', dpi=100, bbox_inches='tight'); plt.close(fig)


def part_dynamics(out: Path, seeds=(0, 1, 2, 3, 4, 5)) -> None:
    "Weight metrics of the small grokking preset over several seeds, one run folder per seed in runs/."
    from functools import partial
    from minitrain.dynamics import load_runs, run_seeds
    from minitrain.workloads import GrokkingPreset, make_grokking_learner
    preset = GrokkingPreset(every=5)
    run_seeds(partial(make_grokking_learner, preset=preset), seeds, out / 'runs', epochs=preset.epochs,
              every=preset.every, n_jobs=None)
    runs = load_runs(out / 'runs')
    fig, axs = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        label = run.attrs['name']
        axs[0].plot(run['epoch'], run['train_accuracy'], color='gray', alpha=0.5)
        axs[0].plot(run['epoch'], run['valid_accuracy'], label=label)
        axs[1].plot(run['epoch'], run['l2'], label=label)
        axs[2].plot(run['epoch'], run['variance_lambda'], label=label)
        first = lambda col, v: next((int(e) for e, a in zip(run['epoch'], run[col]) if a >= v), None)
        log.info('%s: train accuracy >= 0.99 at epoch %s, valid accuracy >= 0.9 at epoch %s (final %.3f)', label,
                 first('train_accuracy', 0.99), first('valid_accuracy', 0.9), run['valid_accuracy'].iloc[-1])
    for a, t in zip(axs, ('accuracy (gray: train)', 'l2', 'variance_lambda')): a.set_title(t); a.set_xlabel('epoch')
    axs[0].legend()
    fig.savefig(out / 'grokking_runs.png', dpi=100, bbox_inches='tight'); plt.close(fig)


def part_hmm(out: Path) -> None:
    "HMM analysis of the grokking runs: model selection, training map (PNG and HTML), metric curves with states."
    from minitrain.hmm_report import analyze_runs
    if not (out / 'runs').exists(): part_dynamics(out)
    # diagonal covariances: with a handful of runs, full covariances over 14 correlated metrics overfit (BIC picks 1)
    a = analyze_runs(out / 'runs', out=out / 'hmm', ks=range(1, 8), metric='valid_accuracy', threshold=0.9,
                     covariance_type='diag')
    reg = a.regression
    log.info('HMM: %d states by BIC; regression R^2 %s; dissimilarity %.3f; files in %s', a.selection.k,
             'n/a' if reg is None else f'{reg.r2:.3f}', a.dissimilarity, a.out)


PARTS = {'backbone': part_backbone, 'hooks': part_hooks, 'probmaps': part_probmaps, 'dynamics': part_dynamics,
         'hmm': part_hmm}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--out', default='report', help='folder for figures and tables')
    ap.add_argument('--parts', nargs='*', default=list(PARTS), choices=list(PARTS), help='which parts to run')
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s', datefmt='%H:%M:%S')
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.parts:
        t = time.time()
        log.info('== %s: %s', name, PARTS[name].__doc__)
        PARTS[name](out)
        log.info('== %s done in %.1fs', name, time.time() - t)
    log.info('report written to %s/', out)


if __name__ == '__main__':
    main()
