"""Web crawl readers on real files: every WARC/WET/WAT/ARC test file of
../shared/data/web_warc_samples (broken ones included) and real HTML pages."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pyarrow as pa
import pytest

from common.inputs import InputSpec
from common.readers import expand_inputs, read_inputs


def read(**spec) -> pa.Table:
    return pa.concat_tables(list(read_inputs([InputSpec(**spec)])))


def inventory(shared_data) -> list[dict[str, str]]:
    folder = shared_data / "web_warc_samples"
    with open(folder / "INVENTORY.tsv", encoding="utf-8") as f:
        return [dict(row, path=str(folder / row["file"])) for row in csv.DictReader(f, delimiter="\t")]


def record_count(types: str) -> int:
    return 0 if types == "-" else sum(int(part.split(":")[1]) for part in types.split(","))


# Files whose records cannot all be read: what the reader gives instead of the rest.
BROKEN = {
    "warcio/example-trunc.warc": "corrupt_file",  # a record shorter than its Content-Length
    "warcio_js/example-bad-length.warc": "corrupt_file",
}


def test_every_warc_sample_accounts_for_every_record(shared_data):
    for entry in inventory(shared_data):
        table = read(path=entry["path"], format="warc")
        reasons = Counter(table.column("reject_reason").to_pylist())
        expected = record_count(entry["warc_record_types"])
        if entry["format"] == "ARC":  # ARC has no record count in the inventory
            assert reasons["skipped_arcinfo"] + reasons["malformed_record"] >= 1, entry["file"]
            assert reasons[None] <= int(entry["text_html_headers"]), entry["file"]
        elif entry["file"] in BROKEN:
            assert reasons[BROKEN[entry["file"]]] == 1, entry["file"]
            assert table.num_rows <= expected + 1
        else:
            assert table.num_rows == expected, (entry["file"], dict(reasons))
        # Kept rows are HTML pages (by content type, or sniffed where none was sent) and WET text.
        for row in table.filter(pa.compute.is_null(table.column("reject_reason"))).to_pylist():
            meta = json.loads(row["meta"])
            assert meta["warc_type"] == "conversion" or (meta.get("content_type") or "text/html").startswith(
                ("text/html", "application/xhtml+xml")), entry["file"]
        if entry["format"] == "WET":
            types = dict(part.split(":") for part in entry["warc_record_types"].split(","))
            assert reasons[None] == int(types["conversion"]), entry["file"]


def test_warc_pages_keep_url_date_record_id_and_their_charset(shared_data):
    table = read(path=str(shared_data / "web_warc_samples/resiliparse/warcfile.warc.gz"))
    kept = table.filter(pa.compute.is_null(table.column("reject_reason")))
    assert kept.num_rows == 16
    reasons = Counter(table.column("reject_reason").to_pylist())
    assert reasons == {None: 16, "skipped_request": 17, "skipped_metadata": 16, "skipped_warcinfo": 1}
    rows = kept.to_pylist()
    assert all(r["url"].startswith("http") and r["warc_record_id"].startswith("urn:uuid:") for r in rows)
    assert all(r["warc_date"].startswith("2020-") for r in rows)
    encodings = Counter(json.loads(r["meta"])["encoding"] for r in rows)
    assert encodings["gb18030"] >= 5  # gb2312 / gbk pages, from the HTTP header or the meta tag
    for r in rows:
        if json.loads(r["meta"])["encoding"] == "gb18030":
            assert sum("\u4e00" <= ch <= "\u9fff" for ch in r["text"]) > 100
            assert "\ufffd" not in r["text"]
    # The same file plain and LZ4-compressed gives the same documents.
    for name in ("warcfile.warc", "warcfile.warc.lz4"):
        other = read(path=str(shared_data / "web_warc_samples/resiliparse" / name))
        assert other.filter(pa.compute.is_null(other.column("reject_reason"))).column("text") == kept.column("text")


def test_clueweb_euc_jp_pages_and_a_clipped_record(shared_data):
    table = read(path=str(shared_data / "web_warc_samples/resiliparse/clueweb-quirk.warc.gz"))
    kept = table.filter(pa.compute.is_null(table.column("reject_reason"))).to_pylist()
    assert len(kept) == 29  # LF-only HTTP headers, a stale Content-Encoding header
    assert {json.loads(r["meta"])["encoding"] for r in kept} == {"euc_jp"}
    clipped = read(path=str(shared_data / "web_warc_samples/resiliparse/clipped.warc.gz"))
    assert clipped.column("reject_reason").to_pylist() == ["truncated_record"]
    assert "75,207 of 88,275 bytes" in clipped.column("reject_detail")[0].as_py()


def test_wet_with_lf_line_ends_is_read_like_cc_net(shared_data):
    table = read(path=str(shared_data / "web_warc_samples/cc_net/sample.warc.txt"), format="warc")
    kept = table.filter(pa.compute.is_null(table.column("reject_reason")))
    assert kept.column("url").to_pylist() == ["http://sample_english.com", "http://sample_chinese.zh",
                                              "http://sample_russian.ru"]
    assert kept.column("text")[0].as_py().startswith("Famous Mark Twain Quotes")


def test_arc_files_are_read_and_bad_lengths_recovered(shared_data):
    folder = shared_data / "web_warc_samples"
    for name in ("warcio/example.arc", "warcio/example.arc.gz"):
        table = read(path=str(folder / name))
        assert table.column("reject_reason").to_pylist() == ["skipped_arcinfo", None]
        page = table.to_pylist()[1]
        assert page["url"] == "http://example.com/" and page["warc_date"] == "2014-02-16T05:02:21Z"
        assert "Example Domain" in page["text"]
    bad = read(path=str(folder / "warcio/bad.arc"))
    assert Counter(bad.column("reject_reason").to_pylist()) == {"malformed_record": 3, "malformed_http": 1}
    blackbook = read(path=str(folder / "ia_web_commons/IAH-20080430204825-00000-blackbook-truncated.arc"))
    assert blackbook.column("reject_reason").null_count == 2  # the two HTML pages of the crawl
    spaced = read(path=str(folder / "warcio/example-space-in-url.arc")).to_pylist()[1]
    assert spaced["url"].endswith("EmailTitle=Examples From The Live Web&IsPopUp=False")


def test_warc_suffixes_are_recognised(shared_data):
    folder = shared_data / "web_warc_samples/cc_whirlwind"
    files = expand_inputs([InputSpec(path=str(folder / "whirlwind.warc*"))])
    assert {f.format for f in files} == {"warc"}
    assert len(files) == 6


def test_html_files_use_their_meta_charset(shared_data, tmp_path):
    page = "<html><head><meta charset='gbk'><title>新闻</title></head><body><p>中文网页正文。</p></body></html>"
    (tmp_path / "page.html").write_bytes(page.encode("gbk"))
    table = read(path=str(tmp_path / "page.html"))
    assert table.column("text").to_pylist() == [page]
    pages = shared_data / "web_readability_testpages/test-pages"
    table = read(path=str(pages / "*/source.html"))
    assert table.num_rows == len(list(pages.glob("*/source.html")))
    assert table.column("reject_reason").null_count == table.num_rows


def test_html_field_of_jsonl(tmp_path):
    path = tmp_path / "crawl.jsonl"
    path.write_text(json.dumps({"html": "<p>Hello there.</p>", "text": "ignored", "url": "http://a/"}) + "\n")
    table = read(path=str(path), html_field="html")
    assert table.column("text").to_pylist() == ["<p>Hello there.</p>"]
    assert json.loads(table.column("meta")[0].as_py()) == {"text": "ignored"}
    with pytest.raises(Exception, match="html_field"):
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": ["x"]}), tmp_path / "p.parquet")
        expand_inputs([InputSpec(path=str(tmp_path / "p.parquet"), html_field="html")])


@pytest.mark.ray
def test_kiln_run_reads_every_web_sample_file(shared_data, run_config):
    """`kiln run` over every file of web_warc_samples (as WARC) and web_charset_samples
    (auto encoding, one document per file): docs_in is every record, each kept or rejected."""
    warcs = [e["path"] for e in inventory(shared_data)]
    charset = shared_data / "web_charset_samples"
    in_process = sum(read(path=p, format="warc").num_rows for p in warcs)
    config = {
        "run": {"name": "web"}, "ray": {"batch_size": 64},
        "inputs": [*({"path": p, "format": "warc", "source": "warc"} for p in warcs),
                   {"path": str(charset / "*/*.*"), "format": "txt", "txt_mode": "file", "encoding": "auto",
                    "source": "charset"}],
        "stages": [{"name": "read", "ops": [{"length_filter": {"min_chars": 1}}]}],
    }
    stats, _ = run_config(config)
    stage = stats["stages"][0]
    charset_files = list(charset.glob("*/*.*"))
    assert stage["docs_in"] == in_process + len(charset_files)
    assert stage["docs_in"] == stage["docs_out"] + stage["rejected_total"]
    assert stage["rejected"]["read/skipped_request"] > 50
    assert stage["rejected"].get("read/bad_encoding", 0) <= 3  # EUC-TW has no Python codec


def test_compressed_html_file(tmp_path):
    import gzip

    page = "<html><head><meta charset=big5></head><body><p>繁體中文的網頁內容。</p></body></html>"
    with gzip.open(tmp_path / "page.html.gz", "wb") as f:
        f.write(page.encode("big5"))
    assert read(path=str(tmp_path / "page.html.gz")).column("text").to_pylist() == [page]
