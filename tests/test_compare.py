"""Two sweeps compared: one HMM for both groups, the detour found by the permutation tests, nothing else flagged,
and the command line."""
import itertools
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from minitrain.cli import main
from minitrain.compare import compare_runs, permutation_test, run_facts
from minitrain.hmm import sample_phase_runs

FEATS = [f'f{i}' for i in range(5)]
PLAIN = np.array([[0, 0, 0, 0, 0], [3, 0, -2, 0, 0], [3, 4, -2, 0, 2]], float)
DETOUR = np.array([PLAIN[0], [0, -3, 0, 3, 0], PLAIN[1], PLAIN[2]])   # the same chain with one state inserted


def group(n, seed, means, length=200):
    runs, truth = sample_phase_runs(n_runs=n, length=length, n_features=5, means=means, seed=seed)
    out = []
    for i, (x, s) in enumerate(zip(runs, truth)):
        df = pd.DataFrame(x, columns=FEATS)
        df['epoch'] = np.arange(len(df)) * 10
        df['valid_accuracy'] = np.where(s == len(means) - 1, 0.95, 0.2)
        df.attrs['name'] = f'seed{i}'
        out.append(df)
    return out


def compare(a, b, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return compare_runs(a, b, names=('plain', 'detour'), features=FEATS, ks=range(2, 6), restarts=2, n_jobs=1,
                            n_permutations=2000, **kw)


def test_the_detour_is_found_and_nothing_else():
    comp = compare(group(12, 0, PLAIN), group(12, 1, DETOUR))
    assert comp.selection.k == 4
    states, edges = comp.states.set_index('state'), comp.edges.set_index('edge')
    detour = states.index[(states['plain runs'] == 0) & (states['detour runs'] == 12)]
    assert len(detour) == 1 and states.loc[detour[0], 'p (visited)'] < 0.05
    d = detour[0]
    changed = {e for e in edges.index if str(d) in e.split(' > ')} | {e for e in edges.index if edges.loc[e, 'detour runs'] == 0}
    assert len(changed) == 3                                           # into and out of the detour, and the skipped edge
    assert (edges.loc[sorted(changed), 'p'] < 0.05).all()
    others = edges.drop(index=sorted(changed))
    assert len(others) >= 1 and (others['p'] >= 0.01).all()          # the shared last transition is not flagged
    assert (states.drop(index=d)['p (visited)'] >= 0.01).all()
    assert comp.convergence['detour'] > comp.convergence['plain'] and comp.convergence['p'] < 0.05   # the detour costs time


def test_two_groups_from_the_same_chain_differ_in_nothing():
    comp = compare(group(10, 2, PLAIN), group(10, 3, PLAIN))
    assert (comp.edges['p'] >= 0.01).all() and (comp.states['p (visited)'] >= 0.01).all()


def test_the_permutation_p_value_matches_the_exact_one():
    values = np.array([[0.9], [0.8], [0.95], [0.7], [0.3], [0.4], [0.6], [0.2]])
    in_b = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    diff, p = permutation_test(values, in_b, n_permutations=20000, seed=1)
    obs = abs(values[in_b].mean() - values[~in_b].mean())
    splits = [np.isin(np.arange(8), c) for c in itertools.combinations(range(8), 4)]
    exact = np.mean([abs(values[s].mean() - values[~s].mean()) >= obs - 1e-12 for s in splits])
    assert diff[0] == pytest.approx(-0.4625) and p[0] == pytest.approx(exact, abs=0.01)


def test_run_facts_of_a_state_sequence():
    f = run_facts(np.array([0, 0, 1, 1, 1, 0, 2]), np.arange(7) * 5., 3)
    assert f['edges'] == {(0, 1): 10., (1, 0): 25., (0, 2): 30.}
    assert f['share'].tolist() == pytest.approx([3 / 7, 3 / 7, 1 / 7]) and f['dwell'][0] == 7.5 and f['first'][2] == 30.


def write_folder(folder, runs):
    folder.mkdir()
    for r in runs: r.to_csv(folder / f"{r.attrs['name']}.csv")
    return folder


def test_minitrain_compare_writes_a_page_with_both_maps(tmp_path, capsys):
    a = write_folder(tmp_path / 'plain', group(8, 0, PLAIN))
    b = write_folder(tmp_path / 'detour', group(8, 1, DETOUR))
    code = main(['compare', str(a), str(b), '--ks', '3-5', '--features', *FEATS, '--restarts', '2', '--permutations', '500',
                 '--n-jobs', '1'])
    out, err = capsys.readouterr()
    assert code == 0, err
    folder = tmp_path / 'compare_plain_vs_detour'
    page = (folder / 'index.html').read_text()
    assert page.count('class="training-map"') == 2 and 'plain (8 runs)' in page and 'detour (8 runs)' in page
    assert 'transitions that differ (p < 0.05)' in out and str(folder / 'index.html') in out
    assert set(pd.read_csv(folder / 'edges.csv').columns) >= {'edge', 'plain runs', 'detour runs', 'p'}
    assert json.loads((folder / 'summary.json').read_text())['runs'] == {'plain': 8, 'detour': 8}
    code = main(['compare', str(a), str(tmp_path / 'nowhere')])
    assert code == 2 and 'nowhere not found' in capsys.readouterr().err


def test_a_comparison_where_no_run_changes_state_still_writes_its_page(tmp_path):
    "One state (K=1): no transitions at all; the edge table is empty but named, and the page says nothing differs."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        comp = compare_runs(group(4, 0, PLAIN[:1], length=60), group(4, 1, PLAIN[:1], length=60), names=('a', 'b'),
                            features=FEATS, ks=[1], restarts=1, n_jobs=1, n_permutations=200, out=tmp_path / 'cmp')
    assert comp.selection.k == 1 and comp.edges.empty and 'p' in comp.edges.columns
    assert 'no transition differs' in (tmp_path / 'cmp' / 'index.html').read_text()
