"""html_extract on real pages: Mozilla Readability's test pages (main content known) and
the HTML responses of real WARC files."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from common.inputs import InputSpec
from common.readers import read_inputs
from operators.base import REJECT_OP, run_operators
from operators.html import HtmlExtract


def pages_table(shared_data, names: list[str]) -> pa.Table:
    folder = shared_data / "web_readability_testpages/test-pages"
    htmls = [(folder / name / "source.html").read_text("utf-8") for name in names]
    return pa.table({"id": names, "text": htmls, "url": pa.nulls(len(names), pa.string()),
                     "meta": pa.nulls(len(names), pa.string())})


@pytest.mark.parametrize("engine", ["trafilatura", "resiliparse"])
def test_main_text_and_title_of_real_pages(shared_data, engine):
    names = ["aclu", "bbc-1", "guardian-1", "qq", "lemonde-1"]
    out = run_operators([HtmlExtract({"engine": engine})], pages_table(shared_data, names))
    assert out.column(REJECT_OP).null_count == len(names) if REJECT_OP in out.column_names else True
    folder = shared_data / "web_readability_testpages/test-pages"
    for name, text, title, ratio in zip(out.column("id").to_pylist(), out.column("text").to_pylist(),
                                        out.column("title").to_pylist(),
                                        out.column("stat.main_text_ratio").to_pylist()):
        expected_title = json.loads((folder / name / "expected-metadata.json").read_text())["title"]
        assert "<div" not in text and "</" not in text
        assert 0 < ratio < 0.5  # pages are mostly markup
        assert title and (expected_title[:15] in title or title[:15] in expected_title), (name, title)
    aclu = out.column("text")[0].as_py()
    assert "I don't use Facebook. I'm not technophobic" in aclu
    assert "Sign up for" not in aclu  # the newsletter box around the article


def test_trafilatura_metadata_goes_to_meta(shared_data):
    out = run_operators([HtmlExtract()], pages_table(shared_data, ["aclu"]))
    meta = json.loads(out.column("meta")[0].as_py())
    assert meta["author"] == "Daniel Kahn Gillmor" and meta["date"] == "2018-04-05"


def test_page_without_main_text_is_rejected_and_plain_text_passes(shared_data):
    table = pa.table({"id": ["empty", "wet"],
                      "text": ["<html><head><title>x</title></head><body><script>var x = 1;</script><img src=a.png></body></html>",
                               "Plain text from a WET record.\nIt has two lines."],
                      "url": [None, None], "meta": [None, None]})
    for engine in ("trafilatura", "resiliparse"):
        out = run_operators([HtmlExtract({"engine": engine})], table)
        by_id = {r["id"]: r for r in out.to_pylist()}
        assert by_id["empty"]["reject_reason"] == "no_main_text", engine
        assert by_id["wet"]["reject_reason"] is None
        assert by_id["wet"]["text"] == "Plain text from a WET record.\nIt has two lines."


def test_real_warc_responses_extract_without_errors(shared_data):
    spec = InputSpec(path=str(shared_data / "web_warc_samples/resiliparse/warcfile.warc.gz"))
    table = pa.concat_tables(list(read_inputs([spec])))
    pages = table.filter(pa.compute.is_null(table.column("reject_reason")))
    out = run_operators([HtmlExtract()], pages.drop_columns(["reject_op", "reject_reason", "reject_detail"]))
    reasons = out.column(REJECT_OP).to_pylist() if REJECT_OP in out.column_names else [None] * out.num_rows
    assert "error" not in (out.column("reject_reason").to_pylist() if "reject_reason" in out.column_names else [])
    kept = [t for t, r in zip(out.column("text").to_pylist(), reasons) if r is None]
    assert len(kept) >= 12
    assert sum(1 for t in kept if sum("\u4e00" <= c <= "\u9fff" for c in t) > 50) >= 4  # the Chinese pages


def test_layout_table_rows_become_paragraph_lines_and_data_rows_stay():
    paragraph = "This is a long paragraph of the story that a page laid out with tables holds in one cell. " * 2
    text = f"| {paragraph.strip()} | | {paragraph.strip()} |\nYear | Film | Notes\n2014 | Gravity | won"
    assert HtmlExtract.untable(text).split("\n") == [paragraph.strip(), paragraph.strip(),
                                                      "Year | Film | Notes", "2014 | Gravity | won"]


@pytest.mark.parametrize("engine", ["trafilatura", "resiliparse"])
def test_tables_follow_include_tables_and_rows_without_text_pass(engine):
    article = "<p>" + "The river rose overnight and the town council met at dawn to plan. " * 6 + "</p>"
    table_html = "<table><tr><td>Rainfall in millimetres</td><td>412</td></tr></table>"
    page = f"<html><head><title>Flood</title></head><body><article>{article}{table_html}{article}</article></body></html>"
    batch = pa.table({"id": ["page", "null"], "text": [page, None], "url": [None, None], "meta": [None, None]})
    with_tables = run_operators([HtmlExtract({"engine": engine})], batch).to_pylist()
    without = run_operators([HtmlExtract({"engine": engine, "include_tables": False})], batch).to_pylist()
    assert "Rainfall in millimetres" in with_tables[0]["text"]
    assert "Rainfall in millimetres" not in without[0]["text"] and "town council" in without[0]["text"]
    assert with_tables[1]["text"] is None and with_tables[1].get("reject_reason") is None
