"""The report page in a real browser: Debian's headless Chromium loads it, and the page must
render without console errors, failed or outside requests, or undecodable plots.

Chromium comes from `make browser` (apt-get, run by `make test`); where it is absent these
tests skip, saying so. A broken page is checked too, so the check itself can fail.
"""

from __future__ import annotations

import re
import struct

import pytest
import report_runs

from pipeline.report import write_report
from pipeline.report.browser import check_page, find_chromium

pytestmark = pytest.mark.skipif(
    find_chromium() is None,
    reason="chromium is not installed (run `make browser`: apt-get install chromium, Debian's package)",
)


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.mark.ray
@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path_factory, shared_data, ray_local, tmp_path):
    run = report_runs.full_run(tmp_path_factory.getbasetemp(), shared_data)
    result = write_report(run)
    page = result.html.read_text()
    check = check_page(result.html, screenshot=tmp_path / "top.png")
    assert check.ok, check.problems
    assert check.info["plots"] == page.count('<img class="plot"') >= 15
    assert check.info["images"] == check.info["plots"] and not check.info["broken_images"]
    assert check.info["sections"] == ["overview", "funnel", "mix", "evaluation", "statistics", "dedup",
                                      "perplexity", "buckets", "shards", "stages", "config"]
    assert check.info["scripts"] == 0
    assert _png_size(tmp_path / "top.png") == (1280, 1600)
    full = check_page(result.html, screenshot=tmp_path / "all.png", full_page=True)
    assert _png_size(tmp_path / "all.png")[1] == full.info["height"] > 1600


def test_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><main><section id="a"><a href="#nowhere">x</a>'
        '<img class="plot" alt="bad plot" src="data:image/svg+xml;base64,bm90IGFuIHN2Zw==">'
        "<script>console.error('boom'); undefinedFunction();</script></section></main></body></html>")
    check = check_page(page)
    problems = "\n".join(check.problems)
    assert not check.ok
    assert "console: boom" in problems
    assert re.search(r"exception: .*undefinedFunction", problems)
    assert "image did not load: bad plot" in problems
    assert "link to a missing section: #nowhere" in problems
