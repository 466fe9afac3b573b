"Report pages: sections, images that exist, tables, atomic writes, and the analysis section."
import re

import numpy as np
import pandas as pd
import pytest
import matplotlib.pyplot as plt

from minitrain.hmm import sample_phase_runs
from minitrain.hmm_report import analyze_runs
from minitrain.report import Report, analysis_section, html_table


def test_sections_images_tables(tmp_path):
    r = Report(tmp_path, 'T', 'An introduction & more.')
    with pytest.raises(ValueError, match='start a section first'): r.text('orphan')
    r.section('First part', 'What to notice <here>.')
    fig, ax = plt.subplots(); ax.plot([1, 2])
    r.figure(fig, 'sub/line.png', 'a line')
    assert not plt.fignum_exists(fig.number)              # saved and closed
    with pytest.raises(FileNotFoundError, match='missing.png does not exist'): r.images([(tmp_path / 'missing.png', 'x')])
    r.section('Second part').table([{'a': 1.234567, 'b': float('nan'), 'c': 'x<y'}], 'caption')
    page = r.write().read_text()
    assert page.count('<section') == 2 and '<a href="#first-part">' in page and '<a href="#second-part">' in page
    assert 'What to notice &lt;here&gt;.' in page and 'An introduction &amp; more.' in page
    assert '<img src="sub/line.png"' in page and (tmp_path / 'sub' / 'line.png').stat().st_size > 1000
    assert '<td>1.235</td><td>–</td><td>x&lt;y</td>' in page
    assert not list(tmp_path.glob('*.tmp'))
    assert 'nothing is fetched' not in page and 'http' not in page.replace('http-equiv', '')   # no network at all


def test_html_table_of_a_dataframe():
    t = html_table(pd.DataFrame({'k': [1, 2], 'bic': [10.5, 3.25]}), digits=3)
    assert t.count('<tr>') == 3 and '<th>bic</th>' in t and '<td>3.25</td>' in t


def test_analysis_section_shows_the_analysis(tmp_path):
    runs, truth = sample_phase_runs(n_runs=10, seed=2)
    frames = []
    for i, (x, s) in enumerate(zip(runs, truth)):
        df = pd.DataFrame(x, columns=[f'f{j}' for j in range(5)])
        df['epoch'] = np.arange(len(df)) * 10
        df['train_accuracy'], df['valid_accuracy'] = 1.0, (s == 2).astype(float)
        df['l2'] = np.where(s == 2, 1.0, 2.0)
        df.attrs['name'] = f'seed{i}'
        frames.append(df)
    a = analyze_runs(frames, out=tmp_path / 'analysis', features=[f'f{j}' for j in range(5)], ks=range(1, 5), restarts=2, n_jobs=1)
    page = analysis_section(Report(tmp_path), a, 'States', 'Three of them.').write().read_text()
    assert page.count('<g class="node">') == a.selection.k == 3 and page.count('<g class="edge">') == 2
    assert all((tmp_path / src).is_file() for src in re.findall(r'<img src="([^"]+)"', page))
    assert 'analysis/runs.png' in page and 'analysis/model_selection.png' in page and 'href="analysis/training_map.html"' in page
    # the lag table: each run enters its final state (2) exactly at its jump (valid accuracy 1 from state 2 on)
    assert (a.lags['lag'] == 0).all() and (a.lags['final_state'] == 2).all()
    assert page.count('<tr>') >= 10 + 1 + 2
