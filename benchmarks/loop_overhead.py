"""Loop overhead: minitrain's Learner against a hand-written torch loop doing the same work.

One epoch (train, then validation with loss and accuracy) of a 784-128-64-10 MLP on 20,000 random samples,
batch 256, SGD, in the same process; 15 runs each, interleaved. Both loops read the same loaders: once
minitrain's `TensorLoader`, once a torch `DataLoader` over a `TensorDataset`. Prints the ratio learner / hand loop
for each loader, of the fastest runs (the cost of the work itself: on a 2-core machine other processes slow single runs
by up to 10%, which is larger than the overhead measured) and of the medians.
"""
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from minitrain import (DataLoaders, DeviceCB, MetricsCB, MLP, MulticlassAccuracy, ProgressCB, TensorLoader,
                       TrainLearner, set_seed)

N_TRAIN, N_VALID, BS, REPEATS = 20_000, 5_000, 256, 15


def data(kind: str):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N_TRAIN + N_VALID, 784, generator=g), torch.randint(0, 10, (N_TRAIN + N_VALID,), generator=g)
    if kind == 'TensorLoader':
        return (TensorLoader(x[:N_TRAIN], y[:N_TRAIN], bs=BS, shuffle=True),
                TensorLoader(x[N_TRAIN:], y[N_TRAIN:], bs=BS * 2))
    return (DataLoader(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=BS, shuffle=True),
            DataLoader(TensorDataset(x[N_TRAIN:], y[N_TRAIN:]), batch_size=BS * 2))


def hand_loop(train_dl, valid_dl):
    "The floor: plain torch, train loss/accuracy and valid loss/accuracy accumulated on device, one sync per phase."
    model = MLP((784, 128, 64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    tot_loss, correct, n = torch.zeros(()), torch.zeros(()), 0
    for xb, yb in train_dl:
        preds = model(xb)
        loss = F.cross_entropy(preds, yb)
        loss.backward(); opt.step(); opt.zero_grad()
        tot_loss += loss.detach() * len(xb); correct += (preds.detach().argmax(1) == yb).sum(); n += len(xb)
    train = (tot_loss / n).item(), (correct / n).item()
    model.eval()
    tot_loss, correct, n = torch.zeros(()), torch.zeros(()), 0
    with torch.no_grad():
        for xb, yb in valid_dl:
            preds = model(xb)
            tot_loss += F.cross_entropy(preds, yb) * len(xb); correct += (preds.argmax(1) == yb).sum(); n += len(xb)
    return train, ((tot_loss / n).item(), (correct / n).item())


def minitrain_loop(train_dl, valid_dl):
    cbs = [DeviceCB('cpu'), MetricsCB(accuracy=MulticlassAccuracy()), ProgressCB()]
    learn = TrainLearner(MLP((784, 128, 64, 10)), DataLoaders(train_dl, valid_dl), F.cross_entropy, lr=0.1, cbs=cbs)
    learn.fit(1)
    return learn.metrics.history


def measure(kind: str) -> None:
    train_dl, valid_dl = data(kind)
    set_seed(0); hand_loop(train_dl, valid_dl); minitrain_loop(train_dl, valid_dl)   # warm up
    times = {'hand': [], 'minitrain': []}
    for _ in range(REPEATS):
        for name, f in (('hand', hand_loop), ('minitrain', minitrain_loop)):
            set_seed(0)
            t = time.perf_counter(); f(train_dl, valid_dl); times[name].append(time.perf_counter() - t)
    hand, mini = min(times['hand']), min(times['minitrain'])
    ratio_median = statistics.median(times['minitrain']) / statistics.median(times['hand'])
    print(f"{kind}: hand-written loop {hand * 1000:.1f} ms/epoch, minitrain Learner {mini * 1000:.1f} ms/epoch "
          f"(TrainLearner + MetricsCB + DeviceCB + ProgressCB, fastest of {REPEATS})")
    print(f"{kind}: ratio minitrain / hand loop: {mini / hand:.3f}x fastest, {ratio_median:.3f}x median  "
          f"(goal <= 1.03x; fastai measured 1.18x)")


def main():
    for kind in ('TensorLoader', 'DataLoader'): measure(kind)


if __name__ == '__main__':
    main()
