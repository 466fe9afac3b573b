"The README's first example runs as written and does what its comments say."
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / 'README.md'


def test_readme_example(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, 'README.md', 'exec'), ns)
    learn = ns['learn']
    assert learn.epoch == 12 and learn.metrics.history[-1]['accuracy'] > 0.9
    assert (tmp_path / 'ck.pt').exists() and (tmp_path / 'loss.png').exists()
