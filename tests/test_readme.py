"""The README's code runs as written and does what its comments say.

Every ```python block runs, in order, in one namespace (as a reader pasting them into one session would); the
```toml block is written to the file its first comment names; of the ```bash blocks, the `minitrain` command lines
run as written. `make demo` / `make test` (which would run this test again) and the torchrun lines (which need a
training script of the reader's) are the only lines not run here; the demo has its own test (test_demo.py) and
torchrun its own (test_distributed.py)."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / 'README.md'
MINITRAIN = Path(sys.executable).with_name('minitrain')


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), re.S)


def test_readme_python_blocks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, code in enumerate(blocks('python')):
        exec(compile(code, f'README.md python block {i + 1}', 'exec'), ns)
    learn = ns['learn']
    assert learn.epoch == 12 and learn.metrics.history[-1]['accuracy'] > 0.9
    assert (tmp_path / 'ck.pt').exists() and (tmp_path / 'loss.png').exists()
    assert ns['fast'].metrics.history[-1]['accuracy'] > 0.6                   # bf16 trains the CNN (no NaN)
    assert len(ns['figs']) == 3 and len(ns['figs'][1].axes) >= len(ns['stats'].stats)
    a = ns['analysis']
    assert a.selection.k >= 2 and len(a.lags) == 4 and (tmp_path / 'runs/parity/analysis/training_map.html').exists()
    assert (tmp_path / 'maps.gif').stat().st_size > 10_000 and len(ns['sheet'].axes) >= 3
    assert sorted(p.name for p in (tmp_path / 'runs/parity').glob('seed*')) == [f'seed{i}' for i in range(6)]
    live = pd.read_csv(tmp_path / 'runs/live/metrics.csv')
    assert live['latent_state'].notna().all() and live['latent_p'].between(0, 1).all()
    assert set(ns['live'].latent_state) >= {'latent_state', 'latent_p', 'latent_p_leave', 'converge_in'}
    assert (tmp_path / 'runs/compare/index.html').exists() and set(ns['widths'].maps) == {'64 hidden', '16 hidden'}
    assert ns['mine'].selection.k >= 1 and len(ns['mine'].lags) == 3
    assert any(c.startswith('1.') for c in pd.read_csv(tmp_path / 'runs/mine/seed0/metrics.csv').columns)   # the hookpoint's


def test_readme_own_model_config(tmp_path):
    from minitrain.experiment import load_config
    cifar = next(b for b in blocks('toml') if b.startswith('# cifar.toml'))
    (tmp_path / 'cifar.toml').write_text(cifar)
    cfg = load_config(tmp_path / 'cifar.toml')
    assert cfg['model']['class'] == 'torchvision.models:resnet18' and cfg['data']['dataset'] == 'cifar10'
    assert cfg['hookpoints'] == ['layer4.1.conv2'] and cfg['seeds'] == list(range(8))


def test_readme_command_line(tmp_path):
    toml = blocks('toml')[0]
    name = re.match(r'# (\S+\.toml)', toml).group(1)
    (tmp_path / name).write_text(toml)
    lines = [l.split('#')[0].strip() for b in blocks('bash') for l in b.splitlines() if l.startswith('minitrain ')]
    assert len(lines) == 3
    for line in lines:
        res = subprocess.run([MINITRAIN, *shlex.split(line)[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (line, res.stderr[-2000:])
    run = pd.read_csv(tmp_path / 'runs/cli/seed3/metrics.csv', index_col=0)
    assert run['epoch'].tolist() == list(range(0, 41, 2))     # 30 epochs, then continued to 40
    assert (tmp_path / 'runs/cli/analysis/index.html').exists()
