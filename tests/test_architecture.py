"The shape of the package: a core that imports itself without cycles, wings that never import each other, an app on top."
import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).parent.parent / 'minitrain'
CORE = {'data', 'datasets', 'events', 'output', 'files', 'device', 'seed', 'metrics', 'learner', 'checkpoint', 'callbacks',
        'accel', 'plotting', 'pages', 'progress', 'schedulers', 'models', 'parallel', 'distributed'}
WINGS = {'hooks': {'hooks'}, 'probmaps': {'probmaps'},
         'dynamics': {'weight_metrics', 'workloads', 'runs', 'dynamics_cb', 'dynamics', 'hmm_em', 'hmm', 'hmm_plots', 'hmm_html', 'latent', 'compare',
                      'hmm_report'}}
APP = {'report', 'experiment', 'demo', 'cli'}   # the minitrain command and its pages: may import anything, imported by none


def moved_name_lookups(tree: ast.Module) -> set[ast.AST]:
    "The nodes inside a module-level `__getattr__`: where a module looks up names that moved out of it (0.2 -> 0.3)."
    return {n for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == '__getattr__' for n in ast.walk(f)}


def imports(module: str, with_moved: bool = False) -> list[tuple[str, list[str]]]:
    "(imported minitrain module, names) for every import of minitrain code in `module`, at any depth."
    tree = ast.parse((PKG / f'{module}.py').read_text())
    skip = set() if with_moved else moved_name_lookups(tree)
    out = []
    for node in ast.walk(tree):
        if node in skip: continue
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: out.append((node.module, [a.name for a in node.names]))
            elif node.level == 1: out += [(a.name, []) for a in node.names]          # from . import module
            elif node.module and node.module.startswith('minitrain.'): out.append((node.module[10:], [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name[10:], []) for a in node.names if a.name.startswith('minitrain.')]
    return out


MODULES = sorted(p.stem for p in PKG.glob('*.py') if not p.stem.startswith('_'))
GRAPH = {m: {dep for dep, _ in imports(m)} for m in MODULES}


def test_every_module_has_a_place():
    placed = CORE.union(APP, *WINGS.values())
    assert set(MODULES) == placed, f"modules not in the architecture: {set(MODULES) - placed}; gone: {placed - set(MODULES)}"


def test_moved_names_are_only_looked_up_lazily_and_only_for_the_names_that_moved():
    "A module-level __getattr__ may import (when called) the module a name moved to; it must raise for any other name."
    for m in MODULES:
        tree = ast.parse((PKG / f'{m}.py').read_text())
        lazy = moved_name_lookups(tree)
        if not lazy: continue
        assert any(isinstance(n, ast.Raise) for n in lazy), f"{m}.__getattr__ must raise AttributeError for other names"
        mod = importlib.import_module(f'minitrain.{m}')
        with pytest.raises(AttributeError): getattr(mod, 'no_such_name_anywhere')


def test_no_import_cycles():
    def reach(m, seen):
        for d in GRAPH[m]:
            if d not in seen: seen.add(d); reach(d, seen)
        return seen
    cycles = [m for m in MODULES if m in reach(m, set())]
    assert not cycles, f"modules that import themselves through others: {cycles}"


@pytest.mark.parametrize('module', sorted(CORE))
def test_core_imports_only_core(module):
    assert GRAPH[module] <= CORE, f"{module} imports {GRAPH[module] - CORE}"


@pytest.mark.parametrize('wing', sorted(WINGS))
def test_wings_import_the_core_and_never_each_other(wing):
    for m in WINGS[wing]:
        assert GRAPH[m] <= CORE | WINGS[wing], f"{m} ({wing} wing) imports {GRAPH[m] - CORE - WINGS[wing]}"


def test_no_private_names_across_modules_and_no_star_imports():
    bad = [(m, dep, n) for m in MODULES for dep, names in imports(m) for n in names if n.startswith('_') or n == '*']
    assert not bad, f"private or star imports between modules: {bad}"


def test_nothing_below_the_app_imports_it():
    bad = {m: GRAPH[m] & APP for m in MODULES if m not in APP and GRAPH[m] & APP}
    assert not bad, f"core or wing modules importing the app layer: {bad}"


def test_no_import_inside_a_function_pulls_in_the_package():
    "`import minitrain` (or `from minitrain import ...`) inside a module would load the whole package, wings included."
    bad = [m for m in MODULES for node in ast.walk(ast.parse((PKG / f'{m}.py').read_text()))
           if isinstance(node, ast.Import) and any(a.name == 'minitrain' for a in node.names)
           or isinstance(node, ast.ImportFrom) and node.module == 'minitrain' and node.level == 0]
    assert not bad, f"modules importing the minitrain package itself: {bad}"
