"`minitrain demo --quick` end to end: the page, its files, and the page in headless Chromium."
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MINITRAIN = Path(sys.executable).with_name('minitrain')
SECTIONS = ['A CNN on digits', 'Inside the network: activation statistics', 'Grokking on modular addition',
            'Sparse parities', 'Two widths compared', 'Class-probability maps']


@pytest.fixture(scope='module')
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'report'
    res = subprocess.run([MINITRAIN, 'demo', '--quick', '--out', str(out)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f'report written to {out / "index.html"}' in res.stdout
    return out


def test_the_page_has_every_section_and_its_files(report):
    page = (report / 'index.html').read_text()
    titles = re.findall(r'<section id="[^"]+"><h3>([^<]+)</h3>', page)
    assert titles == [t.replace('&', '&amp;') for t in SECTIONS]
    for part in re.split(r'<section ', page)[1:]:             # each section says what to look at
        intro = re.search(r'<p class="intro">([^<]+)</p>', part)
        assert intro and intro.group(1).count('. ') >= 1, part[:200]
    images = re.findall(r'<img src="([^"]+)"', page)
    assert all((report / src).is_file() and (report / src).stat().st_size > 1000 for src in images)
    for name in ('digits_curves.png', 'activations_sensible_hist.png', 'activations_too_high_dead.png',
                 'modular_addition_analysis/model_selection.png', 'modular_addition_analysis/metrics_with_states.png',
                 'sparse_parity_analysis/runs.png', 'probmap_region.gif', 'probmap_boundary.gif', 'probmap_contact_sheet.png'):
        assert name in images, name
    assert page.count('class="training-map"') == 2           # two interactive training maps (one per analysis)
    assert 'compare_widths/comparison.png' in images and (report / 'compare_widths' / 'index.html').exists()
    assert 'jump (valid_accuracy first &gt;= threshold)' in page
    assert not re.search(r'(src|href)="(https?:)?//', page)   # nothing fetched from the network
    assert {p.name for p in (report / 'runs').iterdir()} == {'modular_addition-quick', 'sparse_parity-quick', 'sparse_parity-128-quick'}


CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')


def test_the_page_in_headless_chromium(report, tmp_path):
    if CHROMIUM is None: pytest.skip("no Chromium: install it with 'apt-get install -y chromium' (Debian) to run this test")
    sync_playwright = pytest.importorskip('playwright.sync_api', reason="pip install playwright (the dev extra)").sync_playwright
    # screenshots go where CI asks (MINITRAIN_ARTIFACTS, kept as build artifacts), else into this test's tmp folder
    ARTIFACTS = Path(os.environ.get('MINITRAIN_ARTIFACTS') or tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
            '--disable-component-update', '--disable-sync'])
        try:
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            problems = []
            page.on('console', lambda m: problems.append(f'console {m.type}: {m.text}') if m.type in ('error', 'warning') else None)
            page.on('pageerror', lambda e: problems.append(f'page error: {e}'))
            page.on('requestfailed', lambda r: problems.append(f'request failed: {r.url}'))
            page.goto((report / 'index.html').as_uri())
            page.wait_for_load_state('load')
            broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
            n_images = page.evaluate('document.images.length')
            assert n_images >= 15 and broken == []
            maps = page.locator('section svg[viewBox]')
            assert maps.count() == 2
            box = maps.first.bounding_box()
            assert box['width'] > 300 and box['height'] > 100
            assert maps.first.locator('g.node circle').count() >= 2
            tooltip = page.locator('#tooltip')
            assert not tooltip.is_visible()
            edge = maps.first.locator('g.edge path.hit').first
            edge.scroll_into_view_if_needed()
            # the middle of the curve, where a person would point
            x, y = page.evaluate('''p => { const b = p.getBoundingClientRect(), m = p.getPointAtLength(p.getTotalLength() / 2),
                                          s = p.ownerSVGElement.getScreenCTM(); return [m.x * s.a + s.e, m.y * s.d + s.f]; }''',
                                 edge.element_handle())
            page.mouse.move(x, y)
            assert tooltip.is_visible()
            text = tooltip.inner_text()
            assert '→' in text and 'runs' in text and 'transition probability' in text, text
            page.screenshot(path=str(ARTIFACTS / 'report_hover.png'))
            page.mouse.move(5, 5)
            assert not tooltip.is_visible()
            page.screenshot(path=str(ARTIFACTS / 'report.png'), full_page=True)
            assert problems == [], problems
        finally:
            browser.close()
    assert (ARTIFACTS / 'report.png').stat().st_size > 50_000
