import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch

from minitrain import DataLoaders, TensorLoader


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close('all')


def make_dls(n_train=40, n_valid=20, bs=8, n_in=4, n_classes=3, seed=0):
    "A tiny classification problem: linearly separable-ish random data."
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_in, n_classes, generator=g)
    def split(n):
        x = torch.randn(n, n_in, generator=g)
        return x, (x @ w).argmax(1)
    xt, yt = split(n_train)
    xv, yv = split(n_valid)
    return DataLoaders(TensorLoader(xt, yt, bs=bs, shuffle=True), TensorLoader(xv, yv, bs=bs))


@pytest.fixture
def dls():
    return make_dls()
