"""The report's method x metric heat map: direction-aware colours and arrows, intervals across patients, and
wide tables that scroll inside their card at a 1,280 px window (headless Chromium, as the report tests)."""
import re
import subprocess
from pathlib import Path

import pytest
from synthetic_job_folders import write_run

from bench.evaluation.evaluate import evaluate_run
from bench.report.browser import find_chromium
from bench.report.build import write_report

MEASURE = """<script>window.addEventListener('load', () => { const out = [];
document.querySelectorAll('table').forEach(t => { const box = (t.closest('.scroll') || t).getBoundingClientRect();
  if (box.right > t.closest('section').getBoundingClientRect().right + 1) out.push(t.id); });
document.body.setAttribute('data-overflow', out.join(',') || 'none');
document.body.setAttribute('data-page-width', document.documentElement.scrollWidth); });</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("matrix")
    # Long method names make every table wide: they must scroll inside their card, not run off the page.
    write_run(out, {"a-method-with-a-long-name-good": 0.9, "another-long-method-name-poor": 0.2, "mean": 0.0},
              n_genes=24, spots_per_section=36)
    evaluate_run(out, n_boot=100)
    return out, write_report(out).read_text()


def _cells(html: str, table_id: str) -> dict[str, list[str]]:
    table = re.search(rf'<table id="{table_id}".*?</table>', html, re.S).group(0)
    header = re.findall(r"<th>(.*?)</th>", table)
    rows = {}
    for row in re.findall(r"<tr[^>]*><td>(.*?)</td>(.*?)</tr>", table, re.S):
        rows[row[0]] = re.findall(r"<td class=\"num[^\"]*\"( style=\"--good:[0-9.]+\")?>", row[1])
    return header, rows


def test_matrix_colours_follow_each_metrics_direction(report):
    _, html = report
    header, rows = _cells(html, "metric-matrix-acg")
    assert header[:4] == ["Method", "mean rank ↓", "PCC ↑", "Spearman ↑"] and "MSE ↓" in header
    assert "Moran&#39;s I pred ·" in header
    good, poor, mean = (rows[m] for m in ("a-method-with-a-long-name-good", "another-long-method-name-poor", "mean"))
    pcc, mse = header.index("PCC ↑") - 1, header.index("MSE ↓") - 1
    # The better method is the greenest on r (higher is better) and on MSE (lower is better) alike.
    assert good[pcc] == ' style="--good:1.00"' and poor[pcc] == ' style="--good:0.00"'
    assert good[mse] == ' style="--good:1.00"' and poor[mse] == ' style="--good:0.00"'
    moran = header.index("Moran&#39;s I pred ·") - 1
    assert good[moran] == "" and all(c == "" for c in mean)  # descriptive metrics and controls: no colour
    # Three patients: an interval across patients under each defined value.
    table = re.search(r'<table id="metric-matrix-acg".*?</table>', html, re.S).group(0)
    assert len(re.findall(r"<small>\[-?[0-9.]+, -?[0-9.]+\]</small>", table)) >= 2 * 15
    for s in ("heg", "hvg", "svg"):
        assert f'id="metric-matrix-{s}"' in html


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_wide_tables_scroll_inside_their_card_at_1280_px(report, tmp_path):
    out, html = report
    page = tmp_path / "measure.html"
    page.write_text(html.replace("</body>", MEASURE + "</body>"))
    done = subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                           "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    overflow = re.search(r'data-overflow="([^"]*)"', done.stdout)
    width = re.search(r'data-page-width="(\d+)"', done.stdout)
    assert overflow and width, done.stderr[-1000:]
    assert overflow.group(1) == "none", f"tables wider than their card: {overflow.group(1)}"
    assert int(width.group(1)) <= 1280
    assert Path(out / "report.html").is_file()
