"""Speed and memory of class-probability maps on train-viz's demo: the 2-8-16-8-7 ReLU network on the seven-class
blobs, a 360x380 grid over (-3, 15) x (-5, 14).

1. Time per map (`make_map`, boundary) against the floor: one plain batched no-grad forward + softmax of the same
   grid, prebuilt (goal: at most 1.2x).
2. Overhead of snapshotting every epoch against training without it, for store='weights' (render later) and
   store='probs' (evaluate the grid every epoch). train-viz measured 48 ms of maps per 6.8 ms epoch (7.1x).
3. Memory per snapshot and per map (train-viz keeps 0.55 MB per boundary map, 1.09 MB per region map).
4. A 40-frame GIF: `plot_maps` against train-viz's way (a FuncAnimation that sets each frame's array and colour
   limits, saved by matplotlib's Pillow writer), in the same process, on the same 40 maps (goal: faster than it).
"""
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter

import torch
from _timing import median_time
import torch.nn.functional as F
from torch import nn

from minitrain import DataLoaders, TensorLoader, TrainLearner, set_seed
from minitrain.probmaps import ProbMapCB, grid_points, make_map, plot_maps, seven_class_blobs

XLIM, YLIM, NX, NY, EPOCHS = (-3, 15), (-5, 14), 360, 380, 30


def net():
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 7))


def fit_time(cbs_factory):
    def run():
        set_seed(0)
        x, y = seven_class_blobs()
        dls = DataLoaders(TensorLoader(x, y, bs=32), TensorLoader(x, y, bs=420))
        TrainLearner(net(), dls, F.cross_entropy, lr=0.005, cbs=cbs_factory()).fit(EPOCHS, valid=False)
    return median_time(run, 5)


def main():
    set_seed(0)
    model = net()
    pts = grid_points(XLIM, YLIM, NX, NY)
    def floor():
        with torch.no_grad(): F.softmax(model(pts), dim=1)
    step = (XLIM[1] - XLIM[0]) / (NX - 1)
    pm = make_map(model, XLIM, YLIM, 'boundary', axial_gradation=step)
    assert pm.probs.shape[:2] == (NY, NX), pm.probs.shape
    t_floor = median_time(floor)
    t_map = median_time(lambda: make_map(model, XLIM, YLIM, 'boundary', axial_gradation=step))
    print(f"grid {NX}x{NY} = {NX * NY:,} points")
    print(f"floor (batched no-grad forward + softmax): {t_floor * 1000:.1f} ms")
    print(f"make_map (grid, eval mode, chunks, 8-bit copy): {t_map * 1000:.1f} ms   ratio {t_map / t_floor:.2f}x (goal <= 1.2x)")
    print(f"memory per map: {pm.nbytes:,} B for {pm.n_classes} classes (train-viz: 547,200 B boundary, 1,094,400 B region)")

    base = fit_time(lambda: [])
    w = fit_time(lambda: [ProbMapCB(XLIM, YLIM, resolution=370, store='weights')])
    p = fit_time(lambda: [ProbMapCB(XLIM, YLIM, resolution=370, store='probs')])
    per_epoch = base / EPOCHS
    print(f"training: {per_epoch * 1000:.2f} ms/epoch without maps")
    print(f"snapshot every epoch, store='weights': {w / base:.3f}x training time (maps rendered later, "
          f"{t_map * 1000:.0f} ms each)")
    print(f"snapshot every epoch, store='probs':   {p / base:.2f}x training time "
          f"(train-viz: 7.1x, two maps per epoch)")
    cbw, cbp = ProbMapCB(XLIM, YLIM, resolution=370), ProbMapCB(XLIM, YLIM, resolution=370, store='probs')
    x, y = seven_class_blobs()
    dls = DataLoaders(TensorLoader(x, y, bs=32), TensorLoader(x, y, bs=420))
    TrainLearner(net(), dls, F.cross_entropy, lr=0.005, cbs=[cbw, cbp]).fit(1, valid=False)
    print(f"memory per snapshot: weights {cbw.bytes_per_snapshot:,} B; probabilities (8-bit, 7 classes, 370x370) "
          f"{cbp.bytes_per_snapshot:,} B; train-viz kept 1,641,600 B (two dense maps) per epoch")
    print(f"1,000 epochs of a 300x300 grid: {1000 * cbw.bytes_per_snapshot / 1e6:.1f} MB with store='weights', "
          f"{1000 * 300 * 300 * 7 / 1e9:.2f} GB with store='probs'")
    gif_speed()


def trainviz_gif(arrays, path):
    "train-viz's way: one imshow, then per frame set_array and set_clim, saved by matplotlib's Pillow writer."
    fig, ax = plt.subplots(dpi=100)
    im = ax.imshow(arrays[0], cmap='plasma_r', origin='lower')
    ax.axis('off'); fig.tight_layout()
    def update(i):
        im.set_array(arrays[i]); im.set_clim(arrays[i].min(), arrays[i].max())
        return [im]
    FuncAnimation(fig, update, frames=len(arrays), interval=10).save(path, writer=PillowWriter(fps=10))
    plt.close(fig)


def gif_speed():
    x, y = seven_class_blobs()
    set_seed(0)
    cb = ProbMapCB(XLIM, YLIM, resolution=200)
    dls = DataLoaders(TensorLoader(x, y, bs=32), TensorLoader(x, y, bs=420))
    TrainLearner(net(), dls, F.cross_entropy, lr=0.01, cbs=[cb]).fit(39, valid=False)
    maps = list(cb.maps('boundary'))
    arrays = [np.asarray(m) for m in maps]
    out = Path(tempfile.mkdtemp())
    theirs = median_time(lambda: trainviz_gif(arrays, out / 'theirs.gif'), 3)
    ours_plain = median_time(lambda: plot_maps(arrays, out / 'plain.gif'), 3)
    ours_maps = median_time(lambda: plot_maps(maps, out / 'maps.gif', map_type='region', points=(x, y)), 3)
    print(f"a {len(maps)}-frame GIF, 200x200 maps: train-viz's way {theirs:.2f} s; plot_maps of the same arrays "
          f"{ours_plain:.2f} s ({ours_plain / theirs:.2f}x); plot_maps of ProbMaps in region mode with the points and "
          f"a legend {ours_maps:.2f} s ({ours_maps / theirs:.2f}x)")


if __name__ == '__main__':
    main()
