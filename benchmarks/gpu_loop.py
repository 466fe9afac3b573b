"""Where users train: minitrain against a hand-written loop (and Lightning's Trainer when it is installed), on a GPU.

Runs anywhere (on a CPU with small sizes, in a few seconds a case); meant for a GPU. Per-epoch time (train, then
validation, with loss and accuracy of both phases, every number on the host at the end of each phase) of
  - a hand-written torch loop (the floor),
  - minitrain: TrainLearner + MetricsCB + DeviceCB + ProgressCB,
  - Lightning's Trainer doing the same work (if `lightning` imports; it is not a dependency),
on a small MLP and a ResNet-style CNN (32x32x3 inputs, batch 256), in float32 and with mixed precision (bf16 where
the device has it, else fp16 with a GradScaler). Also: StoreModuleStatsCB on every layer, and weight_metrics on the
device against the CPU. Every ratio is against the hand loop measured in the same run, the median of interleaved
epochs after a warm-up epoch.

    python benchmarks/gpu_loop.py            # sizes for the device found
    python benchmarks/gpu_loop.py --epochs 5 # more epochs per measurement (and the bf16-vs-fp32 accuracy check)
"""
import argparse
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from minitrain import (DataLoaders, DeviceCB, MetricsCB, MLP, MulticlassAccuracy, ProgressCB, TensorLoader, TrainLearner,
                       set_seed)
from minitrain.accel import MixedPrecisionCB
from minitrain.hooks import StoreModuleStatsCB
from minitrain.models import ResBlock, conv
from minitrain.weight_metrics import weight_metrics

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
GPU = DEVICE.type == 'cuda'
HALF = torch.bfloat16 if (not GPU or torch.cuda.is_bf16_supported()) else torch.float16


def resnet_cnn() -> nn.Module:
    "A ResNet-style CNN for 32x32x3 images: stem, three residual stages, pooling, a linear head."
    return nn.Sequential(conv(3, 32, stride=1, norm=nn.BatchNorm2d), ResBlock(32, 64, stride=2, norm=nn.BatchNorm2d),
                         ResBlock(64, 128, stride=2, norm=nn.BatchNorm2d), ResBlock(128, 256, stride=2, norm=nn.BatchNorm2d),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))


def small_mlp() -> nn.Module:
    return MLP((3 * 32 * 32, 512, 256, 10))


def images(n_train: int, n_valid: int):
    "Random 32x32x3 images whose labels a fixed random teacher gives: learnable, so accuracies mean something."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_valid, 3, 32, 32, generator=g)
    teacher = torch.randn(3 * 8 * 8, 10, generator=g)
    y = (F.avg_pool2d(x, 4).flatten(1) @ teacher).argmax(1)
    x, y = x.to(DEVICE), y.to(DEVICE)   # on the device: the loaders slice and shuffle there
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def sync():
    if GPU: torch.cuda.synchronize()


def hand_epoch(model, opt, scaler, dtype, train, valid, bs):
    "The floor: loss and accuracy summed on the device, one host copy per phase."
    xt, yt = train
    model.train()
    tot, correct = torch.zeros((), device=DEVICE), torch.zeros((), device=DEVICE)
    perm = torch.randperm(len(xt), device=DEVICE)
    for i in range(0, len(xt), bs):
        idx = perm[i:i + bs]
        xb, yb = xt[idx], yt[idx]
        with torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
            preds = model(xb)
            loss = F.cross_entropy(preds, yb)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if scaler is None: opt.step()
        else: scaler.step(opt); scaler.update()
        opt.zero_grad()
        tot += loss.detach() * len(xb); correct += (preds.detach().argmax(1) == yb).sum()
    train_stats = torch.stack([tot, correct]).div(len(xt)).tolist()
    xv, yv = valid
    model.eval()
    tot, correct = torch.zeros((), device=DEVICE), torch.zeros((), device=DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=dtype, enabled=dtype is not None):
        for i in range(0, len(xv), bs * 2):
            xb, yb = xv[i:i + bs * 2], yv[i:i + bs * 2]
            preds = model(xb)
            tot += F.cross_entropy(preds, yb) * len(xb); correct += (preds.argmax(1) == yb).sum()
    return train_stats, torch.stack([tot, correct]).div(len(xv)).tolist()


class Hand:
    "The hand-written loop as an object with `epoch()`."
    def __init__(self, make, data, bs, lr, dtype):
        set_seed(0)
        self.model = make().to(DEVICE)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.scaler = torch.amp.GradScaler(DEVICE.type) if dtype == torch.float16 else None
        self.dtype, self.data, self.bs = dtype, data, bs
    def epoch(self):
        xt, yt, xv, yv = self.data
        self.last = hand_epoch(self.model, self.opt, self.scaler, self.dtype, (xt, yt), (xv, yv), self.bs)
        sync()
    def accuracy(self): return self.last[1][1]


class Mini:
    "minitrain's learner with the backbone's callbacks, one `fit(1)` per epoch."
    def __init__(self, make, data, bs, lr, dtype, extra=()):
        set_seed(0)
        xt, yt, xv, yv = data
        dls = DataLoaders(TensorLoader(xt, yt, bs=bs, shuffle=True), TensorLoader(xv, yv, bs=bs * 2))
        model = make()
        cbs = [DeviceCB(DEVICE), MetricsCB(accuracy=MulticlassAccuracy(), log=False), ProgressCB(plot=False)]
        if dtype is not None: cbs.append(MixedPrecisionCB(dtype))
        cbs += [cb(model) for cb in extra]
        self.learn = TrainLearner(model, dls, F.cross_entropy, lr=lr, cbs=cbs,
                                  opt_func=lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
    def epoch(self):
        self.learn.fit(1)
        sync()
    def accuracy(self): return self.learn.metrics.last('valid')['accuracy']


class Batches:
    "A loader's batches as a plain iterable with a length."
    def __init__(self, loader): self.loader = loader
    def __iter__(self): return iter(self.loader)
    def __len__(self): return len(self.loader)


def lightning_runner(make, data, bs, lr, dtype):
    "Lightning's Trainer on the same model, data and metrics (None when lightning is not installed)."
    try: import lightning as L
    except ImportError: return None
    for name in ('lightning', 'lightning.pytorch', 'lightning.fabric'):   # its tips and "max_epochs reached" lines
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings('ignore', module='lightning')
    xt, yt, xv, yv = data

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = make()
        def training_step(self, batch, i):
            xb, yb = batch
            preds = self.model(xb)
            loss = F.cross_entropy(preds, yb)
            self.log('train_loss', loss, on_epoch=True, on_step=False)
            self.log('train_acc', (preds.argmax(1) == yb).float().mean(), on_epoch=True, on_step=False)
            return loss
        def validation_step(self, batch, i):
            xb, yb = batch
            preds = self.model(xb)
            self.log('valid_loss', F.cross_entropy(preds, yb), on_epoch=True)
            self.log('valid_acc', (preds.argmax(1) == yb).float().mean(), on_epoch=True)
        def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

    class Runner:
        def __init__(self):
            set_seed(0)
            self.module, self.epochs = Module(), 0
            # the same device-side batches as the other two loops, as a plain iterable (Lightning inspects loaders)
            self.train = Batches(TensorLoader(xt, yt, bs=bs, shuffle=True))
            self.valid = Batches(TensorLoader(xv, yv, bs=bs * 2))
            precision = {None: '32-true', torch.bfloat16: 'bf16-mixed', torch.float16: '16-mixed'}[dtype]
            self.trainer = L.Trainer(max_epochs=0, accelerator='gpu' if GPU else 'cpu', devices=1, precision=precision,
                                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                     enable_model_summary=False, num_sanity_val_steps=0)
        def epoch(self):
            self.epochs += 1
            self.trainer.fit_loop.max_epochs = self.epochs
            self.trainer.fit(self.module, self.train, self.valid)
            sync()
        def accuracy(self): return float(self.trainer.callback_metrics['valid_acc'])
    return Runner()


def per_epoch(runners: dict, epochs: int) -> dict:
    "Median seconds per epoch of each runner: one warm-up epoch each, then epochs interleaved."
    for r in runners.values(): r.epoch()
    times = {k: [] for k in runners}
    for _ in range(epochs):
        for k, r in runners.items():
            t = time.perf_counter(); r.epoch(); times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def report(title: str, times: dict) -> None:
    base = times['hand loop']
    parts = [f"{k} {v * 1000:.1f} ms ({v / base:.3f}x)" for k, v in times.items()]
    print(f"{title}: " + ', '.join(parts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--epochs', type=int, default=5 if GPU else 2)
    args = ap.parse_args()
    name = torch.cuda.get_device_name() if GPU else 'CPU (sizes scaled down: run on a GPU for the numbers that count)'
    print(f"device: {name}; torch {torch.__version__}; mixed precision: {HALF}")
    n_train, n_valid = (25_600, 5_120) if GPU else (512, 256)
    data = images(n_train, n_valid)
    results = {}
    for model_name, make, lr in (('small MLP', small_mlp, 0.05), ('ResNet-style CNN', resnet_cnn, 0.05)):
        for precision, dtype in (('float32', None), (str(HALF).replace('torch.', '') + ' mixed', HALF)):
            runners = {'hand loop': Hand(make, data, 256, lr, dtype), 'minitrain': Mini(make, data, 256, lr, dtype)}
            lightning = lightning_runner(make, data, 256, lr, dtype)
            if lightning is not None: runners['Lightning'] = lightning
            times = per_epoch(runners, args.epochs)
            results[model_name, precision] = times, {k: r.accuracy() for k, r in runners.items()}
            report(f"{model_name}, {precision}, per epoch", times)
        (t32, a32), (t16, a16) = (results[model_name, p] for p in ('float32', str(HALF).replace('torch.', '') + ' mixed'))
        print(f"{model_name}: mixed precision {t32['minitrain'] / t16['minitrain']:.2f}x faster than float32 (minitrain); "
              f"valid accuracy {a32['minitrain']:.3f} float32, {a16['minitrain']:.3f} mixed after {args.epochs + 1} epochs")
    if 'Lightning' not in results['small MLP', 'float32'][0]: print("Lightning: not installed (pip install lightning to compare)")

    # StoreModuleStatsCB on every layer of the CNN
    every_layer = lambda m: StoreModuleStatsCB(mods=[l for l in m.modules() if isinstance(l, (nn.Conv2d, nn.Linear, nn.ReLU))])
    runners = {'hand loop': Hand(resnet_cnn, data, 256, 0.05, None), 'minitrain': Mini(resnet_cnn, data, 256, 0.05, None),
               'minitrain + StoreModuleStatsCB': Mini(resnet_cnn, data, 256, 0.05, None, extra=[every_layer])}
    times = per_epoch(runners, args.epochs)
    report("ResNet-style CNN, activation statistics of every layer, per epoch", times)
    print(f"StoreModuleStatsCB overhead: {times['minitrain + StoreModuleStatsCB'] / times['minitrain']:.3f}x minitrain alone")

    # weight metrics of the CNN's weights, where they live and on the CPU
    model = resnet_cnn().to(DEVICE)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    n_weights = sum(p.numel() for p in model.parameters())
    on_device = statistics.median(_timed(lambda: weight_metrics(model, init=init)) for _ in range(5))
    if not GPU:
        print(f"weight_metrics of the CNN ({n_weights:,} weights): {on_device * 1000:.1f} ms on the CPU")
        return
    cpu_model, cpu_init = resnet_cnn().cpu(), {n: p.cpu() for n, p in init.items()}
    on_cpu = statistics.median(_timed(lambda: weight_metrics(cpu_model, init=cpu_init)) for _ in range(5))
    print(f"weight_metrics of the CNN ({n_weights:,} weights): on the GPU {on_device * 1000:.1f} ms, on the CPU "
          f"{on_cpu * 1000:.1f} ms (the GPU {on_cpu / on_device:.2f}x faster)")


def _timed(f) -> float:
    sync(); t = time.perf_counter(); f(); sync()
    return time.perf_counter() - t


if __name__ == '__main__':
    main()
