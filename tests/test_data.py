"Data: tensor loader, DataLoaders, digits, Fashion-MNIST from tiny IDX files written here."
import gzip
import struct

import numpy as np
import pytest
import torch

from minitrain import DataLoaders, TensorLoader, digits, fashion_mnist, read_idx
from minitrain.datasets import FASHION_FILES


def write_idx(path, arr, gz=True):
    "Hand-written IDX: 0, 0, type 0x08 (ubyte), ndim, big-endian dims, data."
    raw = bytes([0, 0, 0x08, arr.ndim]) + b''.join(struct.pack('>I', d) for d in arr.shape) + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, 'wb').write(raw)


def test_tensor_loader_covers_each_item_once():
    x = torch.arange(23)
    torch.manual_seed(0)
    seen = torch.cat([b[0] for b in TensorLoader(x, bs=5, shuffle=True)])
    assert sorted(seen.tolist()) == list(range(23)) and len(TensorLoader(x, bs=5)) == 5
    with pytest.raises(ValueError, match="same first dimension"):
        TensorLoader(torch.zeros(3), torch.zeros(4))


def test_from_dd_dict_items_become_tuples():
    dd = {'train': [{'img': torch.full((2,), float(i)), 'label': i} for i in range(6)],
          'test': [{'img': torch.zeros(2), 'label': 0}] * 3}
    dls = DataLoaders.from_dd(dd, batch_size=2)
    xb, yb = next(iter(dls.valid))
    assert xb.shape == (3, 2) and yb.tolist() == [0, 0, 0] and dls.valid.batch_size == 4


def test_digits_split_and_standardisation():
    dls = digits(bs=32, seed=1)
    xt, yt = dls.train.tensors
    xv, yv = dls.valid.tensors
    assert xt.shape == (1438, 1, 8, 8) and xv.shape == (359, 1, 8, 8)
    assert xt.mean().item() == pytest.approx(0, abs=1e-5) and xt.std().item() == pytest.approx(1, abs=1e-4)
    assert torch.equal(digits(seed=1).valid.tensors[1], yv) and not torch.equal(digits(seed=2).valid.tensors[1], yv)
    assert set(yt.tolist()) == set(range(10))


def test_fashion_mnist_reads_idx(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {n: rng.integers(0, 256, (5 if 'train' in n else 3, 28, 28)) for n in FASHION_FILES if 'images' in n}
    labels = {n: rng.integers(0, 10, 5 if 'train' in n else 3) for n in FASHION_FILES if 'labels' in n}
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for n, a in {**imgs, **labels}.items(): write_idx(raw / n, a, gz=n.startswith('t10k'))
    dls = fashion_mnist(tmp_path, bs=2)
    xt, yt = dls.train.tensors
    assert xt.shape == (5, 1, 28, 28) and torch.allclose(xt[:, 0], torch.tensor(imgs[FASHION_FILES[0]] / 255, dtype=torch.float32))
    assert yt.tolist() == labels[FASHION_FILES[1]].tolist()
    assert fashion_mnist(tmp_path, flatten=True).valid.tensors[0].shape == (3, 784)


def test_fashion_mnist_missing_files_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        fashion_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        fashion_mnist(tmp_path / 'nope')


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / 'bad').write_bytes(b'hello world')
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / 'bad')
    raw = bytes([0, 0, 8, 1]) + struct.pack('>I', 10) + bytes(4)
    (tmp_path / 'short').write_bytes(raw)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / 'short')
