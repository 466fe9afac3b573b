"Behaviour of the Learner: events, cancels, errors, optimizer, saving, epochs."
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from minitrain import (EVENTS, Callback, CallbackError, CancelBatchException, CancelEpochException, CancelFitException,
                       DataLoaders, Learner, MomentumLearner, NonFiniteLossError, TensorLoader, TrainCB, TrainLearner,
                       set_seed)
from conftest import make_dls


class Recorder(Callback):
    "Records every event it sees, with the phase."
    def __init__(self, order=0, name='rec', log=None):
        self.order, self.name, self.log = order, name, log if log is not None else []
for _ev in EVENTS:
    setattr(Recorder, _ev, (lambda ev: lambda self, learn: self.log.append((self.name, ev, learn.training)))(_ev))


def one_batch_dls():
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    return DataLoaders(TensorLoader(x, y, bs=4), TensorLoader(x, y, bs=8))


def test_event_order_one_epoch():
    rec = Recorder()
    TrainLearner(nn.Linear(4, 3), one_batch_dls(), F.cross_entropy, cbs=[rec]).fit(1)
    evs = [(e, t) for _, e, t in rec.log]
    train_batch = [('before_batch', True), ('after_predict', True), ('after_loss', True), ('after_backward', True),
                   ('before_step', True), ('after_step', True), ('after_batch', True), ('cleanup_batch', True)]
    valid_batch = [('before_batch', False), ('after_predict', False), ('after_loss', False), ('after_batch', False),
                   ('cleanup_batch', False)]
    expected = ([('before_fit', True), ('before_epoch', True)] + train_batch * 2 +
                [('after_epoch', True), ('cleanup_epoch', True), ('before_epoch', False)] + valid_batch +
                [('after_epoch', False), ('cleanup_epoch', False), ('after_fit', False), ('cleanup_fit', False)])
    assert evs == expected


def test_callbacks_run_in_order_ties_keep_list_order(dls):
    log = []
    cbs = [Recorder(order=5, name='late', log=log), Recorder(order=0, name='a', log=log),
           Recorder(order=0, name='b', log=log), Recorder(order=-3, name='early', log=log)]
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=cbs).fit(1)
    assert [n for n, e, _ in log if e == 'before_fit'] == ['early', 'a', 'b', 'late']


def test_sorted_once_per_fit(dls, monkeypatch):
    import minitrain.learner
    calls = []
    orig = minitrain.learner.dispatch_table
    monkeypatch.setattr(minitrain.learner, 'dispatch_table', lambda *a: (calls.append(1), orig(*a))[1])
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[Recorder()]).fit(2)
    assert len(calls) == 1


def test_fit_returns_learner_and_epochs_keep_counting(dls):
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy).fit(2)
    assert isinstance(learn, TrainLearner) and learn.epoch == 2
    seen = []
    class E(Callback):
        def before_epoch(self, learn): seen.append(learn.epoch)
    learn.fit(2, cbs=[E()])
    assert seen == [2, 2, 3, 3] and learn.epoch == 4


def test_fit_callbacks_removed_even_on_error(dls):
    class Boom(Callback):
        def after_loss(self, learn): raise ValueError('boom')
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy)
    with pytest.raises(CallbackError):
        learn.fit(1, cbs=[Boom()])
    assert learn.cbs == []


def test_callback_error_names_callback_and_event_and_restores_mode(dls):
    class Boom(Callback):
        def after_epoch(self, learn):
            if not learn.training: raise KeyError('missing')
    model = nn.Linear(4, 3)
    model.train()
    learn = TrainLearner(model, dls, F.cross_entropy, cbs=[Boom()])
    with pytest.raises(CallbackError) as info:
        learn.fit(1)
    assert 'Boom.after_epoch' in str(info.value) and isinstance(info.value.__cause__, KeyError)
    assert info.value.event == 'after_epoch'
    assert model.training   # the valid phase left it in eval mode; fit restored it


def test_cleanup_runs_on_error_and_cancel(dls):
    class Boom(Callback):
        def after_predict(self, learn): raise RuntimeError('x')
    rec = Recorder()
    with pytest.raises(CallbackError):
        TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[rec, Boom()]).fit(1)
    evs = [e for _, e, _ in rec.log]
    assert evs[-3:] == ['cleanup_batch', 'cleanup_epoch', 'cleanup_fit'] and 'after_fit' not in evs


def test_cancel_batch_skips_step_and_after_batch():
    class Skip(Callback):
        def after_loss(self, learn):
            if learn.training: raise CancelBatchException()
    rec = Recorder()
    model = nn.Linear(4, 3)
    w0 = model.weight.detach().clone()
    TrainLearner(model, one_batch_dls(), F.cross_entropy, lr=1., cbs=[Skip(), rec]).fit(1)
    train = [e for _, e, t in rec.log if t]
    assert 'after_backward' not in train and 'after_step' not in train
    assert train.count('cleanup_batch') == 2 and train.count('after_batch') == 0
    assert torch.equal(model.weight, w0)   # no step happened


def test_cancel_epoch_skips_rest_of_phase(dls):
    class StopAfterTwo(Callback):
        def after_batch(self, learn):
            if learn.training and learn.iter == 1: raise CancelEpochException()
    rec = Recorder()
    TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[StopAfterTwo(), rec]).fit(1)
    train_batches = [e for _, e, t in rec.log if t and e == 'before_batch']
    assert len(train_batches) == 2
    assert [e for _, e, t in rec.log if e.endswith('_epoch')] == ['before_epoch', 'cleanup_epoch', 'before_epoch',
                                                                   'after_epoch', 'cleanup_epoch']


def test_cancel_fit_skips_after_fit_runs_cleanup(dls):
    class Stop(Callback):
        def after_batch(self, learn): raise CancelFitException()
    rec = Recorder()
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[Stop(), rec]).fit(3)
    evs = [e for _, e, _ in rec.log]
    assert evs.count('before_batch') == 1 and 'after_fit' not in evs and evs[-1] == 'cleanup_fit'
    assert learn.epoch == 0   # the cancelled epoch is not counted


def test_missing_step_is_an_error(dls):
    with pytest.raises(NotImplementedError, match="predict"):
        Learner(nn.Linear(4, 3), dls, F.cross_entropy).fit(1)
    # validation-only fits need only predict and get_loss
    class Half(Callback):
        def predict(self, learn): learn.preds = learn.model(learn.batch[0])
        def get_loss(self, learn): learn.loss = learn.loss_func(learn.preds, learn.batch[1])
    Learner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[Half()]).fit(1, train=False)
    with pytest.raises(NotImplementedError, match="backward"):
        Learner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[Half()]).fit(1)


def test_misspelled_event_is_an_error(dls):
    class Typo(Callback):
        def after_epcoh(self, learn): pass
    with pytest.raises(AttributeError, match="after_epoch"):
        TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[Typo()]).fit(1)


def test_traincb_equals_trainlearner(dls):
    set_seed(1); m1 = nn.Linear(4, 3)
    set_seed(1); m2 = nn.Linear(4, 3)
    set_seed(2); Learner(m1, dls, F.cross_entropy, lr=0.3, cbs=[TrainCB()]).fit(2)
    set_seed(2); TrainLearner(m2, dls, F.cross_entropy, lr=0.3).fit(2)
    assert torch.equal(m1.weight, m2.weight)


def test_traincb_n_inp_two():
    class Add(nn.Module):
        def __init__(self): super().__init__(); self.lin = nn.Linear(2, 1)
        def forward(self, a, b): return self.lin(torch.stack([a, b], 1))
    a, b = torch.randn(32), torch.randn(32)
    y = (3 * a - b).unsqueeze(1)
    dls = DataLoaders(TensorLoader(a, b, y, bs=8, shuffle=True), TensorLoader(a, b, y, bs=16))
    learn = Learner(Add(), dls, F.mse_loss, lr=0.2, cbs=[TrainCB(n_inp=2)]).fit(30)
    assert torch.allclose(learn.model.lin.weight, torch.tensor([[3., -1.]]), atol=1e-2)


def sgd_momentum(params, lr): return optim.SGD(params, lr, momentum=0.9)


def test_optimizer_state_survives_fits(dls):
    set_seed(0); ma = nn.Linear(4, 3)
    set_seed(0); mb = nn.Linear(4, 3)
    set_seed(5); TrainLearner(ma, dls, F.cross_entropy, lr=0.1, opt_func=sgd_momentum).fit(3)
    set_seed(5)
    learn = TrainLearner(mb, dls, F.cross_entropy, lr=0.1, opt_func=sgd_momentum).fit(1)
    opt = learn.opt
    buf = opt.state[mb.weight]['momentum_buffer'].clone()
    learn.fit(1); learn.fit(1)
    assert learn.opt is opt and not torch.equal(buf, opt.state[mb.weight]['momentum_buffer'])
    assert torch.equal(ma.weight, mb.weight)   # 1+1+1 epochs == 3 epochs: momentum was kept
    learn.fit(1, lr=0.01)
    assert learn.opt is opt and opt.param_groups[0]['lr'] == 0.01
    learn.fit(1, reset_opt=True)
    assert learn.opt is not opt and learn.opt.param_groups[0]['lr'] == 0.01


def test_save_load_continues_same_trajectory(dls, tmp_path):
    set_seed(0); m_ref = nn.Linear(4, 3)
    set_seed(0); m_a = nn.Linear(4, 3)
    set_seed(3)
    TrainLearner(m_ref, dls, F.cross_entropy, lr=0.1, opt_func=sgd_momentum).fit(4)
    set_seed(3)
    learn = TrainLearner(m_a, dls, F.cross_entropy, lr=0.1, opt_func=sgd_momentum).fit(2)
    learn.save(tmp_path / 'ck.pt')
    torch.manual_seed(999)   # disturb the RNG: load must restore it
    learn2 = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, opt_func=sgd_momentum).load(tmp_path / 'ck.pt')
    assert learn2.epoch == 2
    learn2.fit(2)
    assert learn2.epoch == 4 and torch.equal(learn2.model.weight, m_ref.weight)


def test_load_missing_file_is_clear(dls, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy).load(tmp_path / 'nope.pt')


def test_momentum_learner(dls):
    learn = MomentumLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1, mom=0.5)
    learn.model.weight.grad = torch.ones_like(learn.model.weight)
    learn.zero_grad()
    assert torch.equal(learn.model.weight.grad, torch.full_like(learn.model.weight, 0.5))
    with pytest.raises(ValueError, match="No learning rate"):
        MomentumLearner(nn.Linear(4, 3), dls, F.cross_entropy).fit(1)
    MomentumLearner(nn.Linear(4, 3), dls, F.cross_entropy).fit(1, lr=0.1)


def nan_dls(bad_batch):
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    x[bad_batch * 8] = float('nan')
    return DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x[:8].nan_to_num(), y[:8], bs=8))


def test_nonfinite_loss_names_epoch_and_batch():
    learn = TrainLearner(nn.Linear(4, 3), nan_dls(3), F.cross_entropy, lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, train batch 3"):
        learn.fit(2)


def test_nonfinite_loss_check_every_one_stops_at_once():
    rec = Recorder()
    learn = TrainLearner(nn.Linear(4, 3), nan_dls(1), F.cross_entropy, cbs=[rec], check_every=1)
    with pytest.raises(NonFiniteLossError, match="batch 1"):
        learn.fit(1)
    assert [e for _, e, _ in rec.log].count('before_batch') == 2


def test_nonfinite_loss_warn_mode_keeps_training():
    learn = TrainLearner(nn.Linear(4, 3), nan_dls(2), F.cross_entropy, on_nonfinite='warn')
    with pytest.warns(RuntimeWarning, match="train batch 2"):
        learn.fit(1)
    assert learn.epoch == 1


def test_empty_loader_is_an_error():
    x, y = torch.randn(0, 4), torch.randint(0, 3, (0,))
    dls = DataLoaders(TensorLoader(x, y, bs=8), TensorLoader(x, y, bs=8))
    with pytest.raises(ValueError, match="train loader yielded no batches"):
        TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy).fit(1)


def test_wrong_batch_structure_is_clear():
    data = [{'x': torch.randn(4), 'y': 1} for _ in range(8)]
    dls = DataLoaders(torch.utils.data.DataLoader(data, batch_size=4), torch.utils.data.DataLoader(data, batch_size=4))
    with pytest.raises(TypeError, match="keys \\['x', 'y'\\]"):
        TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy).fit(1)


def test_shape_mismatch_is_clear(dls):
    with pytest.raises(ValueError, match=r"preds have shape \(8, 5\) but targets \(8,\)"):
        TrainLearner(nn.Linear(4, 5), dls, F.mse_loss).fit(1)


def test_summary_shapes_and_params(dls):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    s = TrainLearner(model, dls, F.cross_entropy).summary()
    assert [r[0] for r in s] == ['Linear', 'ReLU', 'Linear']
    assert s[0][1:4] == ((8, 4), (8, 6), 30) and s[2][1:4] == ((8, 6), (8, 3), 21)
    assert s[0][4] == pytest.approx(24 / 1e6)          # 24 weights, each used once: MFLOPs
    assert 'Total parameters: 51' in repr(s)


@pytest.mark.parametrize('step', ['predict', 'get_loss', 'backward', 'step', 'zero_grad'])
def test_failing_step_of_a_callback_names_callback_and_step(dls, step):
    class Steps(TrainCB): pass
    def boom(self, learn): raise KeyError('broken')
    setattr(Steps, step, boom)
    with pytest.raises(CallbackError, match=rf"^Steps\.{step} raised KeyError: 'broken'") as e:
        Learner(nn.Linear(4, 3), dls, F.cross_entropy, cbs=[Steps()]).fit(1)
    assert e.value.event == step and isinstance(e.value.__cause__, KeyError)


def test_shared_attributes_are_declared(dls):
    learn = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy)
    assert learn.metrics is None and learn.hparams is None and learn.opt is None and learn.batch is None
    learn.fit(1)
    assert learn.metrics is None     # no MetricsCB: still None, not missing
    from minitrain import MetricsCB
    m = MetricsCB()
    learn.fit(1, cbs=[m])
    assert learn.metrics is m


def test_save_and_lr_find_are_the_functions_of_their_modules(dls, tmp_path):
    from minitrain.checkpoint import load_learner, save_learner
    from minitrain.schedulers import lr_find
    set_seed(0)
    a = TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1).fit(1)
    save_learner(a, tmp_path / 'a.pt')
    b = load_learner(TrainLearner(nn.Linear(4, 3), dls, F.cross_entropy, lr=0.1), tmp_path / 'a.pt')
    assert b.epoch == 1 and torch.equal(a.model.weight, b.model.weight)
    before = a.model.weight.clone()
    res = lr_find(a, plot=False)
    assert torch.equal(a.model.weight, before) and a.epoch == 1 and len(res.lrs) == len(res.losses) > 0
    assert Learner.save is save_learner and Learner.lr_find is lr_find
