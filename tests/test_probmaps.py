"Class-probability maps: numbers against direct forward passes, training untouched, colours, interpolation, GIFs, errors."
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import animation
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from minitrain import DataLoaders, TensorLoader, TrainLearner, set_seed
from minitrain.probmaps import (ProbMap, ProbMapCB, class_colors, grid_points, interpolate_maps, make_map, map_grid,
                                plot_map, plot_maps, region_rgb, seven_class_blobs, spirals)


def demo_net():
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 7))


def bn_dropout_net():
    return nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 7))


def blob_dls():
    x, y = seven_class_blobs(n_per_class=20)
    return DataLoaders(TensorLoader(x, y, bs=16, shuffle=True), TensorLoader(x, y, bs=64))


def test_make_map_matches_direct_forward():
    set_seed(0)
    model = demo_net()
    pm = make_map(model, (-3, 15), (-5, 14), axial_gradation=0.5)
    assert pm.probs.shape == (39, 37, 7)   # 19/0.5+1 rows (y), 18/0.5+1 columns (x)
    xs, ys = np.linspace(-3, 15, 37), np.linspace(-5, 14, 39)
    for r, c in [(0, 0), (38, 36), (10, 20), (5, 30)]:
        direct = F.softmax(model(torch.tensor([[xs[c], ys[r]]], dtype=torch.float32)), 1)[0]
        assert np.allclose(pm.probs[r, c].astype(np.float32), direct.detach().numpy(), atol=2e-3)
    assert np.array_equal(pm.classes, pm.probs.argmax(-1)) and pm.values.dtype == np.float32
    assert pm.codes.dtype == np.uint8 and pm.nbytes == 39 * 37 * 7   # one byte per probability


def test_make_map_epoch_filter_and_modes():
    model = demo_net()
    assert make_map(model, (0, 1), (0, 1), epoch_num=5, epoch_freq=2) is None
    assert make_map(model, (0, 1), (0, 1), epoch_num=4, epoch_freq=2).epoch == 4
    with pytest.raises(ValueError, match="epoch_freq needs epoch_num"):
        make_map(model, (0, 1), (0, 1), epoch_freq=4)
    assert make_map(model, (0, 1), (0, 1), epoch_num=0).epoch == 0      # train-viz code passes epoch_num alone
    region = make_map(model, (0, 1), (0, 1), 'region', square_axis_points=8)
    assert region.values.shape == (8, 8) and region.values.dtype.kind == 'i'
    with pytest.raises(ValueError, match="map_type"):
        make_map(model, (0, 1), (0, 1), 'contour')


def test_snapshot_leaves_model_bn_and_rng_untouched():
    set_seed(0)
    model = bn_dropout_net().train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    make_map(model, (-3, 15), (-5, 14), square_axis_points=50)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize('store', ['weights', 'probs'])
def test_training_bit_for_bit_the_same_with_the_callback(store):
    def run(cbs):
        set_seed(3)
        model = bn_dropout_net()
        TrainLearner(model, blob_dls(), F.cross_entropy, lr=0.05, cbs=cbs).fit(3)
        return model.state_dict()
    cb = ProbMapCB(resolution=30, store=store)
    a, b = run([]), run([cb])
    assert all(torch.equal(a[k], b[k]) for k in a) and len(cb.snapshots) == 4


def test_callback_snapshots_render_like_make_map():
    set_seed(0)
    model = demo_net()
    cb = ProbMapCB(xlim=(-3, 15), ylim=(-5, 14), resolution=40, every=2)
    learn = TrainLearner(model, blob_dls(), F.cross_entropy, lr=0.02, cbs=[cb]).fit(5)
    assert [s.epoch for s in cb.snapshots] == [0, 2, 4]
    last = cb.maps()[2]
    # the last snapshot is after epoch 4 (epochs done); re-train a copy to that point is not needed: load its weights
    model.load_state_dict(cb.snapshots[2].state)
    direct = make_map(model, (-3, 15), (-5, 14), square_axis_points=40)
    assert np.array_equal(last.probs, direct.probs) and last.epoch == 4
    assert 0 <= last.info['train acc'] <= 1 and cb.bytes_per_snapshot == sum(p.numel() * 4 for p in model.parameters())
    assert learn.epoch == 5


def test_step_unit_and_limits_from_data():
    cb = ProbMapCB(every=3, unit='step', resolution=10)
    dls = blob_dls()
    TrainLearner(demo_net(), dls, F.cross_entropy, lr=0.01, cbs=[cb]).fit(2)
    n_steps = 2 * len(dls.train)
    assert [s.step for s in cb.snapshots] == [0] + list(range(3, n_steps + 1, 3))
    x = dls.train.tensors[0]
    span = x[:, 0].max() - x[:, 0].min()
    assert cb.xlim[0] == pytest.approx((x[:, 0].min() - 0.1 * span).item())


def test_region_colours_fixed_per_class():
    p1 = np.zeros((2, 2, 7), np.float16); p1[..., 3] = 1.0
    p2 = np.full((2, 2, 7), 0.0, np.float16); p2[0, 0, 3] = 1.0; p2[1, 1, 5] = 1.0
    a, b = region_rgb(p1), region_rgb(p2)
    assert np.allclose(a[0, 0], b[0, 0]) and np.allclose(a[0, 0], class_colors(7)[3])
    assert np.allclose(b[1, 1], class_colors(7)[5]) and not np.allclose(b[1, 1], a[1, 1])


def fake_maps(n, shape=(6, 5, 3)):
    rng = np.random.default_rng(0)
    out = []
    for e in range(n):
        p = rng.random(shape).astype(np.float32)
        out.append(ProbMap((p / p.sum(-1, keepdims=True)).astype(np.float16), (0, 1), (0, 1), 'region', e))
    return out


@pytest.mark.parametrize('kind', ['linear', 'geometric'])
def test_interpolation_count_and_originals_exact(kind):
    maps = fake_maps(4)
    frames = interpolate_maps(maps, 5, kind)
    assert len(frames) == (4 - 1) * 5 + 1
    originals = frames[::5]
    assert all(f is m for f, m in zip(originals, maps))
    mid = frames[2]   # 2/5 of the way from map 0 to map 1
    assert mid.epoch == pytest.approx(0.4) and np.allclose(mid.probs.astype(np.float32).sum(-1), 1, atol=1e-2)
    if kind == 'linear':
        expected = 0.6 * maps[0].probs.astype(np.float32) + 0.4 * maps[1].probs.astype(np.float32)
        assert np.allclose(mid.probs, expected, atol=1 / 255)   # within the 8-bit step


def test_gif_written_with_right_frame_count(tmp_path):
    maps = fake_maps(3)
    anim = plot_maps(maps, tmp_path / 'maps.gif', interpolation_factor=3, frame_interval=50)
    assert isinstance(anim, animation.FuncAnimation)
    with Image.open(tmp_path / 'maps.gif') as im:
        assert im.n_frames == (3 - 1) * 3 + 1


def test_mp4_without_ffmpeg_suggests_gif(tmp_path):
    if animation.writers.is_available('ffmpeg'): pytest.skip('ffmpeg is installed here')
    with pytest.raises(RuntimeError, match=r"\.gif"):
        plot_maps(fake_maps(2), tmp_path / 'maps.mp4')


def test_plot_maps_rejects_mismatched_plain_arrays():
    with pytest.raises(ValueError, match="2-D arrays of one shape"):
        plot_maps([np.zeros((4, 4)), np.ones((5, 4))])


def test_static_frames():
    maps = fake_maps(4)
    fig = plot_map(maps[1], points=(np.array([[0.5, 0.5]]), np.array([2])), class_names=['a', 'b', 'c'])
    assert isinstance(fig, Figure) and fig.axes[0].get_xlim() == (0, 1)
    sheet = map_grid(maps, epochs=[0, 3])
    assert sum(bool(a.images) for a in sheet.axes) == 2
    with pytest.raises(ValueError, match="no map has an epoch"):
        map_grid(maps, epochs=[9])


def test_more_than_two_features():
    set_seed(0)
    x3 = torch.randn(60, 3); y3 = (x3[:, 2] > 0).long()
    dls = DataLoaders(TensorLoader(x3, y3, bs=20, shuffle=True), TensorLoader(x3, y3, bs=60))
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(Exception, match=r"dims=\(i, j\)"):
        TrainLearner(model, dls, F.cross_entropy, cbs=[ProbMapCB(resolution=10)]).fit(1)
    cb = ProbMapCB(resolution=10, dims=(0, 2), fill='mean')
    TrainLearner(model, dls, F.cross_entropy, cbs=[cb]).fit(1)
    assert np.allclose(cb._grid(10)[:, 1].numpy(), x3[:, 1].mean().item())
    assert cb.maps()[0].probs.shape == (10, 10, 2)
    with pytest.raises(ValueError, match="more than 2 input features"):
        make_map(model, (0, 1), (0, 1), square_axis_points=4)
    pts = grid_points((0, 1), (0, 1), 3, 3, dims=(2, 0), fill=[7., 8., 9.])
    assert pts[:, 1].eq(8).all() and pts[1].tolist() == [0., 8., 0.5]


def test_bad_limits_and_outputs():
    model = demo_net()
    with pytest.raises(ValueError, match="min < max"):
        make_map(model, (5, 1), (0, 1))
    with pytest.raises(ValueError, match="pair"):
        ProbMapCB(xlim=3)
    with pytest.raises(ValueError, match="one logit per class"):
        make_map(nn.Sequential(nn.Linear(2, 1), nn.Flatten(0)), (0, 1), (0, 1), square_axis_points=4)


def test_generators():
    x, y = spirals(50, 4)
    assert x.shape == (200, 2) and torch.bincount(y).tolist() == [50] * 4
    x, y = seven_class_blobs(n_per_class=500, spread=1.1, seed=2)
    centres = torch.stack([x[y == k].mean(0) for k in range(7)])
    assert torch.allclose(centres, torch.tensor([[1, 1], [11, 1], [6, 5], [1, 8], [6, -1], [11, 8], [6, 10]], dtype=torch.float32), atol=0.15)
