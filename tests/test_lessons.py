"The notebooks read as lessons: one module each, small export cells each followed by a cell that uses them, pictures."
import json
import re
from pathlib import Path

import pytest

NBS = sorted((Path(__file__).resolve().parents[1] / 'nbs').glob('*.ipynb'))
MAX_EXPORT_LINES = 110   # the Learner, a run folder, a callback: one class each; most export cells are far shorter
MAX_WITHOUT_FIGURE = 3   # notebooks whose idea has nothing to draw


def cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())['cells']


def source(cell: dict) -> str:
    return ''.join(cell['source'])


def is_export(cell: dict) -> bool:
    return cell['cell_type'] == 'code' and source(cell).lstrip().startswith('#| export')


def has_figure(cell: dict) -> bool:
    return any('image/png' in o.get('data', {}) or 'image/svg+xml' in o.get('data', {}) for o in cell.get('outputs', []))


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_each_notebook_exports_the_module_it_is_named_after(nb):
    exps = [m for c in cells(nb) for m in re.findall(r'#\|\s*default_exp\s+(\S+)', source(c))]
    assert exps == [re.sub(r'^\d+[a-z]?_', '', nb.stem)], f"{nb.name} exports {exps}"


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_every_export_cell_is_small_and_followed_by_a_cell_that_uses_it(nb):
    cs = [c for c in cells(nb) if c['cell_type'] == 'code' and not source(c).lstrip().startswith('#| default_exp')]
    exports = [i for i, c in enumerate(cs) if is_export(c)]
    for i in exports:
        lines = len(source(cs[i]).splitlines())
        assert lines <= MAX_EXPORT_LINES, f"{nb.name}: an export cell of {lines} lines: {source(cs[i])[:80]!r}"
    for i in exports[1:]:   # the first export cell holds the imports
        used = i + 1 < len(cs) and not is_export(cs[i + 1])
        assert used, f"{nb.name}: export cell {source(cs[i])[:80]!r} is not followed by a cell that uses it"


def test_almost_every_lesson_has_a_picture():
    without = [nb.name for nb in NBS if not any(has_figure(c) for c in cells(nb))]
    assert len(without) <= MAX_WITHOUT_FIGURE, f"notebooks without a figure: {without}"


def test_notebooks_are_saved_with_their_outputs():
    empty = [nb.name for nb in NBS if not any(c.get('outputs') for c in cells(nb) if c['cell_type'] == 'code')]
    assert not empty, f"notebooks saved without outputs (run make outputs): {empty}"
