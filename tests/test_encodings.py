"""Input encodings: declared codecs, `auto` detection, bad_encoding rejections and the
replacement count, on chardet's real test files (../shared/data/web_charset_samples)."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pytest

from common.decoding import codec_name
from common.errors import ConfigError
from common.inputs import InputSpec
from common.readers import read_inputs
from pipeline.config import parse_config


def read(**spec) -> pa.Table:
    tables = list(read_inputs([InputSpec(**spec)]))
    return pa.concat_tables(tables)


def charset_samples(shared_data) -> list[dict[str, str]]:
    folder = shared_data / "web_charset_samples"
    with open(folder / "EXPECTED.tsv", encoding="utf-8") as f:
        return [dict(row, path=str(folder / row["path"])) for row in csv.DictReader(f, delimiter="\t")]


def truth(sample: dict[str, str]) -> str:
    """The file decoded in its true encoding, read as kiln (and browsers) read the label:
    gb2312 with gb18030, which maps A1AA to U+2014 where Python's gb2312 gives U+2015."""
    with open(sample["path"], "rb") as f:
        return f.read().decode(codec_name(sample["encoding"]))


def test_every_charset_sample_reads_in_its_true_encoding(shared_data):
    samples = [s for s in charset_samples(shared_data) if s["python_strict_decode"] == "yes"]
    assert len(samples) > 200
    for sample in samples:
        table = read(path=sample["path"], format="txt", txt_mode="file", encoding=sample["encoding"])
        assert table.num_rows == 1
        assert table.column("reject_reason")[0].as_py() is None, sample["path"]
        assert table.column("text")[0].as_py() == truth(sample), sample["path"]


def test_auto_detects_the_chinese_samples_and_accounts_for_every_file(shared_data):
    samples = charset_samples(shared_data)
    chinese = [s for s in samples if s["encoding"] in ("gb2312", "big5")]
    assert len(chinese) == 46
    for sample in chinese:
        table = read(path=sample["path"], format="txt", txt_mode="file", encoding="auto")
        assert table.column("text")[0].as_py() == truth(sample), sample["path"]
    # Every other file (EUC-TW has no Python codec; single-byte Latin pages are ambiguous) is
    # one row: kept in some decoding, or rejected as bad_encoding, never an error.
    for sample in samples:
        table = read(path=sample["path"], format="txt", txt_mode="file", encoding="auto")
        assert table.num_rows == 1
        assert table.column("reject_reason")[0].as_py() in (None, "bad_encoding")


def test_a_codec_python_lacks_is_a_config_error_naming_the_yaml_path():
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.encoding.*unknown encoding 'euc-tw'"):
        parse_config({"inputs": [{"path": "x.txt", "encoding": "euc-tw"}], "stages": []})


@pytest.fixture
def gbk_jsonl(shared_data, tmp_path):
    """Real Chinese news (THUCNews) as a GBK-encoded JSONL file."""
    lines = (shared_data / "zh_thucnews_cnews_sample/data/cnews/cnews.val.txt").read_text("utf-8").splitlines()
    texts = [line.split("\t", 1)[1][:300] for line in lines[:50]]
    texts = [t for t in texts if t.encode("gbk", "ignore").decode("gbk") == t][:40]
    path = tmp_path / "news.jsonl"
    path.write_bytes(b"".join(json.dumps({"text": t}, ensure_ascii=False).encode("gbk") + b"\n" for t in texts))
    return path, texts


def test_gbk_jsonl_is_rejected_as_utf8_and_read_with_gbk_or_auto(gbk_jsonl):
    path, texts = gbk_jsonl
    as_utf8 = read(path=str(path))
    assert set(as_utf8.column("reject_reason").to_pylist()) == {"invalid_utf8"}
    for encoding in ("gbk", "gb18030", "auto"):
        table = read(path=str(path), encoding=encoding)
        assert table.column("reject_reason").null_count == len(texts)
        assert table.column("text").to_pylist() == texts


def test_replace_is_asked_for_and_counted(gbk_jsonl):
    path, texts = gbk_jsonl
    table = read(path=str(path), on_decode_error="replace")
    counts = table.column("stat.decode_replacements").to_pylist()
    assert all(count > 0 for count in counts)
    assert counts == [text.count("\ufffd") for text in table.column("text").to_pylist()]
    # Without replace the statistic is not measured.
    assert read(path=str(path), encoding="gbk").column("stat.decode_replacements").null_count == len(texts)


def test_bytes_that_do_not_decode_are_bad_encoding(tmp_path):
    path = tmp_path / "broken.txt"
    # 0x81 0x20 is not a GBK character; 0xff is never a UTF-8 byte.
    path.write_bytes("中文一行\n".encode("gbk") + b"\x81\x20 broken\n")
    table = read(path=str(path), encoding="gbk")
    assert table.column("reject_reason").to_pylist() == [None, "bad_encoding"]
    assert "not valid gb18030 at byte 0" in table.column("reject_detail")[1].as_py()


def test_utf16_lines_are_a_config_error_and_whole_files_read(shared_data):
    with pytest.raises(ConfigError, match=r"inputs\[0\]: encoding utf-16: such files cannot be split into lines"):
        parse_config({"inputs": [{"path": "x.jsonl", "encoding": "utf-16"}], "stages": [{"name": "s", "ops": []}]})
    sample = next(s for s in charset_samples(shared_data) if s["encoding"] == "utf-16le")
    table = read(path=sample["path"], format="txt", txt_mode="file", encoding="utf-16le")
    assert table.column("text")[0].as_py() == truth(sample)
