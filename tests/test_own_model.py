"""Your own model and data: datasets read from local folders in every format (tiny ones written here), the paper's
image workloads, and a config that names your function or your model class, with hook points, through to the page."""
import gzip
import json
import pickle
import struct
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from minitrain.cli import main
from minitrain.datasets import read_cifar, read_image_folder, read_images, read_mnist, vision_dls

N_TRAIN, N_VALID = 25, 8


def cli(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_idx(path, array):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
    with gzip.open(path, 'wb') as f: f.write(header + array.tobytes())


def tiny_mnist(root):
    "MNIST as torchvision leaves it on disk: root/MNIST/raw/*-ubyte.gz."
    raw = root / 'MNIST' / 'raw'
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (('train', N_TRAIN), ('t10k', N_VALID)):
        labels = rng.integers(0, 10, n)
        images = (labels[:, None, None] * 25 + rng.integers(0, 20, (n, 28, 28))).clip(0, 255)   # learnable
        write_idx(raw / f'{prefix}-images-idx3-ubyte.gz', images)
        write_idx(raw / f'{prefix}-labels-idx1-ubyte.gz', labels)
    return root


def tiny_cifar(root, kind='python', name='cifar10'):
    "CIFAR in torchvision's python folder (pickled dicts) or the binary one (label byte + 3072 bytes per image)."
    rng = np.random.default_rng(1)
    n_classes = 10 if name == 'cifar10' else 100
    if kind == 'python':
        folder = root / ('cifar-10-batches-py' if name == 'cifar10' else 'cifar-100-python')
        folder.mkdir(parents=True)
        key = 'labels' if name == 'cifar10' else 'fine_labels'
        files = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch'] if name == 'cifar10' else ['train', 'test']
        for f in files:
            n = N_VALID if f in ('test_batch', 'test') else N_TRAIN // (5 if name == 'cifar10' else 1)
            d = {b'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8), key.encode(): rng.integers(0, n_classes, n).tolist()}
            with open(folder / f, 'wb') as fh: pickle.dump(d, fh)
        if name == 'cifar10':
            with open(folder / 'batches.meta', 'wb') as fh: pickle.dump({b'label_names': [f'c{i}'.encode() for i in range(10)]}, fh)
    else:
        folder = root / 'cifar-10-batches-bin'
        folder.mkdir(parents=True)
        for f, n in [(f'data_batch_{i}.bin', N_TRAIN // 5) for i in range(1, 6)] + [('test_batch.bin', N_VALID)]:
            rows = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 256, (n, 3072))], 1).astype(np.uint8)
            (folder / f).write_bytes(rows.tobytes())
    return root


def tiny_image_folder(root):
    from PIL import Image
    rng = np.random.default_rng(2)
    for split, n in (('train', 6), ('valid', 2)):
        for cls, colour in (('cat', 40), ('dog', 200)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                px = (colour + rng.integers(-20, 20, (20, 24, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / split / cls / f'{i}.png')
    return root


# Data ---------------------------------------------------------------------------------------------------------

def test_mnist_cifar_and_image_folders_are_read_from_disk(tmp_path):
    m = read_mnist(tiny_mnist(tmp_path / 'm'))
    assert m.x_train.shape == (N_TRAIN, 1, 28, 28) and m.x_train.dtype == torch.uint8 and m.y_valid.shape == (N_VALID,)
    for kind in ('python', 'binary'):
        c = read_cifar(tiny_cifar(tmp_path / kind, kind))
        assert c.x_train.shape == (N_TRAIN, 3, 32, 32) and c.x_valid.shape == (N_VALID, 3, 32, 32) and len(c.classes) == 10
    assert read_cifar(tmp_path / 'python').classes[3] == 'c3'
    c100 = read_images('cifar100', tiny_cifar(tmp_path / 'c100', name='cifar100'))
    assert c100.x_train.shape == (N_TRAIN, 3, 32, 32) and int(c100.y_train.max()) < 100
    f = read_image_folder(tiny_image_folder(tmp_path / 'pets'), size=16)
    assert f.classes == ('cat', 'dog') and f.x_train.shape == (12, 3, 16, 16) and f.y_valid.tolist() == [0, 0, 1, 1]


def test_a_cifar_file_holding_code_is_refused_and_never_run(tmp_path):
    import os
    root = tiny_cifar(tmp_path / 'c', 'python')
    class Payload:
        def __reduce__(self): return (os.system, (f'touch {tmp_path / "PWNED"}',))
    with open(root / 'cifar-10-batches-py' / 'data_batch_1', 'wb') as fh: pickle.dump({b'data': Payload()}, fh)
    with pytest.raises(ValueError, match=r"data_batch_1: refused: it holds a posix.system object"):
        read_cifar(root)
    assert not (tmp_path / 'PWNED').exists()


@pytest.mark.parametrize('name, make', [('mnist', tiny_mnist), ('cifar10', tiny_cifar), ('imagefolder', tiny_image_folder)])
def test_a_missing_or_incomplete_folder_names_the_files_and_how_to_get_them(tmp_path, name, make):
    with pytest.raises(FileNotFoundError, match='does not exist'): read_images(name, tmp_path / 'nowhere')
    root = make(tmp_path / 'd')
    if name == 'imagefolder':
        import shutil
        shutil.rmtree(root / 'valid')
        with pytest.raises(FileNotFoundError, match=r"train/<class>.*valid/<class>"): read_images(name, root)
        return
    victim = next(root.rglob('train-labels-idx1-ubyte.gz' if name == 'mnist' else 'data_batch_3'))
    victim.unlink()
    with pytest.raises(FileNotFoundError) as info: read_images(name, root)
    assert victim.name.replace('.gz', '') in str(info.value) and 'download=True' in str(info.value)


def test_in_memory_loaders_normalise_and_augment_batchwise(tmp_path):
    from minitrain.datasets import augment_batch
    images = read_cifar(tiny_cifar(tmp_path / 'c'))
    dls = vision_dls(images, bs=8)
    xb, yb = next(iter(dls.train))
    x_all = torch.cat([b[0] for b in dls.train])
    assert xb.shape == (8, 3, 32, 32) and abs(x_all.mean().item()) < 0.05 and abs(x_all.std().item() - 1) < 0.05
    aug = augment_batch()
    out, y2 = aug((xb, yb))
    assert out.shape == xb.shape and torch.equal(y2, yb) and not torch.equal(out, xb)
    with pytest.raises(ValueError, match='BatchTransformCB'): vision_dls(images, augment=True)
    on_disk = vision_dls(images, bs=8, in_memory=False, augment=True)     # torchvision transforms, a DataLoader
    assert next(iter(on_disk.train))[0].shape == (8, 3, 32, 32)


# The command line takes your code -------------------------------------------------------------------------------

MODULE = '''
import torch.nn.functional as F
from torch import nn
from minitrain import TrainLearner, digits

def make_learner(seed, hidden=16, lr=0.3):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return TrainLearner(model, digits(bs=128, seed=0), F.cross_entropy, lr=lr)

def not_a_learner(seed):
    return 42

def no_arguments():
    return None
'''


@pytest.fixture
def my_module(tmp_path, monkeypatch):
    pkg = tmp_path / 'src'
    pkg.mkdir()
    (pkg / 'myexperiments.py').write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(pkg))
    yield 'myexperiments'
    sys.modules.pop('myexperiments', None)


def test_a_config_naming_your_function_trains_its_seeds_and_analyses_them(tmp_path, capsys, my_module):
    cfg = tmp_path / 'mine.toml'
    cfg.write_text(f'workload = "{my_module}:make_learner"\nseeds = 3\nepochs = 40\nevery = 1\nn_jobs = 1\n'
                   f'out = "{(tmp_path / "runs").as_posix()}"\nhookpoints = ["1", "3"]\n[params]\nhidden = 8\n')
    code, out, err = cli(['train', cfg], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / 'runs' / 'seed1' / 'run.json').read_text())
    assert meta['status'] == 'finished' and meta['hparams']['params'] == {'hidden': 8} and meta['hparams']['seed'] == 1
    cols = pd.read_csv(tmp_path / 'runs' / 'seed0' / 'metrics.csv', index_col=0).columns
    assert {'1.l2', '3.l2', 'l2', 'valid_loss'} <= set(cols)                   # per hook point and whole model
    code, out, err = cli(['analyze', tmp_path / 'runs', '--ks', '1-2', '--restarts', '1', '--n-jobs', '1',
                          '--hookpoint', '1'], capsys)
    assert code == 0, err
    page = (tmp_path / 'runs' / 'analysis' / 'index.html').read_text()
    assert '1.l1' in page and '1.l2' in page


def test_a_config_naming_a_torchvision_model_trains_on_a_tiny_cifar_folder(tmp_path, capsys):
    root = tiny_cifar(tmp_path / 'data')
    cfg = tmp_path / 'resnet.toml'
    cfg.write_text(f'seeds = 1\nepochs = 1\nevery = 1\nn_jobs = 1\nout = "{(tmp_path / "runs").as_posix()}"\n'
                   f'hookpoints = ["layer1.0.conv1"]\n[model]\nclass = "torchvision.models:resnet18"\nnum_classes = 10\n'
                   f'[data]\ndataset = "cifar10"\nroot = "{root.as_posix()}"\nbs = 8\naugment = true\n')
    code, out, err = cli(['train', cfg], capsys)
    assert code == 0, err
    rows = pd.read_csv(tmp_path / 'runs' / 'seed0' / 'metrics.csv', index_col=0)
    assert rows['epoch'].tolist() == [0, 1] and rows['layer1.0.conv1.l2'].notna().all()
    assert json.loads((tmp_path / 'runs' / 'seed0' / 'run.json').read_text())['model'] == 'ResNet'


def test_the_papers_mnist_mlp_from_the_command_line(tmp_path, capsys):
    root = tiny_mnist(tmp_path / 'data')
    cfg = tmp_path / 'mlp.toml'
    cfg.write_text(f'workload = "image"\npreset = "mnist_mlp"\nseeds = 1\nepochs = 2\nevery = 1\nn_jobs = 1\n'
                   f'out = "{(tmp_path / "runs").as_posix()}"\n[model]\nhidden = 16\n[data]\nroot = "{root.as_posix()}"\nbs = 8\n')
    code, out, err = cli(['train', cfg], capsys)
    assert code == 0, err
    meta = json.loads((tmp_path / 'runs' / 'seed0' / 'run.json').read_text())
    assert meta['optimizer']['name'] == 'AdamW' and meta['hparams']['hidden'] == 16 and meta['data']['train_size'] == N_TRAIN


@pytest.mark.parametrize('text, words', [
    ('workload = "nosuchmodule_xyz:make"\n', ["'workload'", "module 'nosuchmodule_xyz' does not import", 'ModuleNotFoundError']),
    ('workload = "myexperiments:missing"\n', ["module 'myexperiments' has no 'missing'"]),
    ('workload = "myexperiments:no_arguments"\n', ['must be a function make_learner(seed, **params)']),
    ('workload = "myexperiments:make_learner"\n[params]\nwidth = 3\n', ["'params.width'", 'takes no argument', 'hidden']),
    ('workload = "myexperiments:not_a_learner"\n', ['returned a int, not a minitrain Learner']),
    ('workload = "myexperiments:make_learner"\nhookpoints = ["layer9"]\n', ["'hookpoints'", "'layer9' is not a module"]),
    ('workload = "myexperiments:make_learner"\nhookpoints = ["2"]\n', ["'2' has no weights to measure (a ReLU)"]),
    ('[model]\nclass = "torchvision.models:resnet18"\n[data]\ndataset = "cifar10"\n', ["'data.root'", 'is needed for cifar10']),
    ('[model]\nclass = "torchvision.models:resnet18"\n[data]\ndataset = "cifar10"\nroot = "/nowhere/x"\n', ['/nowhere/x', 'does not exist']),
    ('hookpoints = ["layer1.0.conv"]\n[model]\nclass = "torchvision.models:resnet18"\n', ["is not a module of ResNet: did you mean 'layer1.0.conv"]),
    ('[model]\nclass = "torchvision.models:resnet18"\n[data]\ndataset = "svhn"\n', ["unknown dataset 'svhn'", 'cifar10']),
])
def test_every_mistake_names_its_field(tmp_path, capsys, my_module, text, words):
    top, _, tables = text.partition('[')
    cfg = tmp_path / 'bad.toml'
    cfg.write_text(f'out = "{(tmp_path / "runs").as_posix()}"\nseeds = 1\nepochs = 1\n' + top + ('[' + tables if tables else ''))
    code, out, err = cli(['train', cfg], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for w in words: assert w in err, (w, err)
    assert not (tmp_path / 'runs').exists()
