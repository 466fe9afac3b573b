import subprocess
from pathlib import Path

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest
import torch

from minitrain import DataLoaders, TensorLoader

REPO = Path(__file__).resolve().parents[1]


def git_status() -> str | None:
    "The repository's `git status --porcelain` (None outside a git checkout)."
    try: done = subprocess.run(['git', 'status', '--porcelain'], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError): return None
    return done.stdout if done.returncode == 0 else None


def pytest_sessionstart(session):
    session.config.git_status_before = git_status()   # tests/test_zz_clean_tree.py compares the tree with this


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    "Every test runs in its own temporary folder: whatever it writes by a relative path stays there."
    monkeypatch.chdir(tmp_path)
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
