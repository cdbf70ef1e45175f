"""Readers: every record becomes a kept or a rejected row; bad records never stop a file."""

from __future__ import annotations

import bz2
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from common.errors import InputError
from common.inputs import InputSpec
from common.readers import expand_inputs, read_inputs


def read(tmp_path, **spec) -> pa.Table:
    tables = list(read_inputs([InputSpec(**spec)]))
    return pa.concat_tables(tables) if tables else pa.table({})


def rejected_reasons(table: pa.Table) -> dict[str, str]:
    return {i: r for i, r in zip(table.column("id").to_pylist(), table.column("reject_reason").to_pylist()) if r}


def write_jsonl_with_bad_lines(path, opener=open):
    good = [{"id": i, "text": f"document number {i}", "url": f"http://x/{i}", "lang_hint": "en"} for i in range(5)]
    with opener(path, "wb") as f:
        for rec in good[:2]:
            f.write(json.dumps(rec).encode() + b"\n")
        f.write(b'{"id": 100, "text": "unterminated\n')  # malformed JSON
        f.write(b"\n")  # blank line: not a record
        f.write(b'{"id": 101, "text": "bad \xff\xfe bytes"}\n')  # invalid UTF-8
        f.write(b'{"id": 102}\n')  # no text field
        f.write(b'{"id": 103, "text": "   "}\n')  # empty text
        f.write(b'{"id": 104, "text": 42}\n')  # text not a string
        f.write(b'[1, 2, 3]\n')  # not an object
        for rec in good[2:]:
            f.write(json.dumps(rec).encode() + b"\n")


@pytest.mark.parametrize("suffix,opener", [
    ("jsonl", open), ("jsonl.gz", gzip.open), ("jsonl.bz2", bz2.open),
    ("jsonl.zst", lambda p, m: zstandard.open(p, m)),
])
def test_jsonl_bad_records_become_rejected_rows_and_good_rows_survive(tmp_path, suffix, opener):
    path = tmp_path / f"web.{suffix}"
    write_jsonl_with_bad_lines(path, opener)
    table = read(tmp_path, path=str(path), id_field="id")
    assert table.num_rows == 11
    reasons = rejected_reasons(table)
    assert reasons == {
        "web:web." + suffix + ":3": "malformed_json",
        "web:web." + suffix + ":5": "invalid_utf8",
        "web:102": "missing_text",
        "web:103": "empty_text",
        "web:104": "text_not_string",
        "web:web." + suffix + ":9": "not_an_object",
    }
    kept = table.filter(pa.compute.is_null(table.column("reject_reason")))
    assert kept.column("id").to_pylist() == [f"web:{i}" for i in range(5)]
    assert kept.column("url").to_pylist()[0] == "http://x/0"
    assert json.loads(kept.column("meta")[0].as_py()) == {"lang_hint": "en"}
    details = table.filter(pa.compute.is_valid(table.column("reject_reason"))).column("reject_detail").to_pylist()
    assert any(f"web.{suffix}:3" in d for d in details)  # file and line in the detail


def test_replace_mode_keeps_undecodable_bytes_as_replacement_characters(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"caf\xe9 au lait\nfine line\n")
    table = read(tmp_path, path=str(path), on_decode_error="replace")
    assert table.column("text").to_pylist() == ["caf\ufffd au lait", "fine line"]
    strict = read(tmp_path, path=str(path))
    assert rejected_reasons(strict) == {"a:a.txt:1": "invalid_utf8"}


def test_truncated_gzip_keeps_what_was_read_and_rejects_the_rest(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    payload = b"".join(json.dumps({"text": f"line {i} " + "x" * 50}).encode() + b"\n" for i in range(2000))
    data = gzip.compress(payload)
    path.write_bytes(data[: len(data) // 2])
    table = read(tmp_path, path=str(path))
    reasons = list(rejected_reasons(table).values())
    assert reasons == ["corrupt_file"]
    assert 0 < table.num_rows - 1 < 2000


def test_huge_document_is_rejected_with_a_reason_unless_allowed(tmp_path):
    path = tmp_path / "big.jsonl"
    big = "长" * ((50 << 20) // 3)  # about 50 MB of UTF-8
    with open(path, "w") as f:
        f.write(json.dumps({"text": "small one"}) + "\n")
        f.write(json.dumps({"text": big}, ensure_ascii=False) + "\n")
    table = read(tmp_path, path=str(path))
    assert rejected_reasons(table) == {"big:big.jsonl:2": "too_large"}
    allowed = read(tmp_path, path=str(path), max_doc_bytes="64MB")
    assert allowed.column("reject_reason").null_count == 2


def test_text_modes_and_ids(tmp_path):
    path = tmp_path / "forum.txt"
    path.write_text("first post\n\nsecond post\nstill second\n\n\nthird\n")
    lines = read(tmp_path, path=str(path))
    assert lines.column("id").to_pylist() == ["forum:forum.txt:1", "forum:forum.txt:3", "forum:forum.txt:4",
                                              "forum:forum.txt:7"]
    paragraphs = read(tmp_path, path=str(path), txt_mode="paragraphs")
    assert paragraphs.column("text").to_pylist() == ["first post", "second post\nstill second", "third"]
    assert paragraphs.column("id").to_pylist() == ["forum:forum.txt:1", "forum:forum.txt:3", "forum:forum.txt:7"]
    whole = read(tmp_path, path=str(tmp_path), txt_mode="file", source="posts")
    assert whole.column("id").to_pylist() == ["posts:forum.txt"]


def test_parquet_with_nested_text_field_and_bad_rows(tmp_path):
    path = tmp_path / "books.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "body": [{"content": "text a"}, {"content": None}, {"content": "text c"}]}), path)
    table = read(tmp_path, path=str(path), text_field="body.content", id_field="id", source="books")
    assert table.column("text").to_pylist()[::2] == ["text a", "text c"]
    assert rejected_reasons(table) == {"books:b": "missing_text"}
    with pytest.raises(InputError, match=r"inputs\[0\]\.text_field: .* has no column 'text'"):
        read(tmp_path, path=str(path))


def test_missing_paths_and_unknown_formats_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match=r"inputs\[0\]\.path: .*nope.jsonl does not exist"):
        expand_inputs([InputSpec(path=str(tmp_path / "nope.jsonl"))])
    with pytest.raises(InputError, match="no files match"):
        expand_inputs([InputSpec(path=str(tmp_path / "*.jsonl"))])
    (tmp_path / "data.bin").write_bytes(b"\x00")
    with pytest.raises(InputError, match="cannot tell the format"):
        expand_inputs([InputSpec(path=str(tmp_path / "data.bin"))])


def test_empty_file_yields_no_rows_and_ids_are_stable(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert read(tmp_path, path=str(tmp_path / "empty.jsonl")).num_rows == 0
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}"}) for i in range(3)))
    first = read(tmp_path, path=str(path)).column("id").to_pylist()
    assert first == read(tmp_path, path=str(path)).column("id").to_pylist() == ["w:w.jsonl:1", "w:w.jsonl:2", "w:w.jsonl:3"]


def test_parquet_with_empty_row_groups_reads_every_row(tmp_path):
    path = tmp_path / "gaps.parquet"
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        writer.write_table(pa.table({"id": [], "text": []}, schema=schema))
        writer.write_table(pa.table({"id": ["a"], "text": ["first document"]}, schema=schema))
        writer.write_table(pa.table({"id": [], "text": []}, schema=schema))
        writer.write_table(pa.table({"id": ["b"], "text": ["second document"]}, schema=schema))
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    table = read(tmp_path, path=str(path), id_field="id")
    assert table.column("text").to_pylist() == ["first document", "second document"]
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": [], "text": []}, schema=schema), empty)
    assert read(tmp_path, path=str(empty), id_field="id").num_rows == 0


def test_real_reviews_file_reads_every_line(shared_data):
    path = shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt"
    table = read(None, path=str(path), source="reviews")
    expected = sum(1 for line in path.read_bytes().splitlines() if line.strip())
    assert table.num_rows == expected
    assert table.column("reject_reason").null_count == table.num_rows


def test_a_repeated_id_is_renamed_within_a_file_and_across_files(tmp_path):
    """Issue 17 item 1: two records with one id (same file, or two files of one source) used
    to keep the id twice, and decisions joined back by id were corrupted."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    line = json.dumps({"id": "x", "text": "the same line twice"}) + "\n"
    (tmp_path / "a/part.jsonl").write_text(line + line + json.dumps({"id": "x#2", "text": "a real x#2"}) + "\n")
    (tmp_path / "b/part.jsonl").write_text(line)
    specs = [InputSpec(path=str(tmp_path / "a"), source="web", id_field="id"),
             InputSpec(path=str(tmp_path / "b"), source="web", id_field="id")]
    ids = pa.concat_tables(read_inputs(specs)).column("id").to_pylist()
    assert ids == ["web:x", "web:x#3", "web:x#2", "web:x#4"]  # a real x#2 keeps its id
    assert len(set(ids)) == len(ids)


def test_id_claims_hold_many_ids_and_find_repeats_across_batches():
    from common.ids import IdClaims

    claims = IdClaims()
    for start in range(0, 200_000, 4096):
        assert claims.claim([f"doc{i}" for i in range(start, min(start + 4096, 200_000))]) == {}
    assert len(claims) == 200_000 and len(claims.runs) <= 18
    assert claims.claim(["new", "doc7", "doc199999", "new"]) == {1: "doc7#2", 2: "doc199999#2", 3: "new#2"}
    assert claims.claim(["doc7"]) == {0: "doc7#3"}


@pytest.mark.parametrize("suffix,opener", [("jsonl", open), ("jsonl.gz", gzip.open)])
def test_a_utf8_bom_does_not_reject_the_first_line(tmp_path, suffix, opener):
    """Issue 17 item 5: a BOM made the first (good) record `read/malformed_json`."""
    path = tmp_path / f"bom.{suffix}"
    with opener(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + json.dumps({"id": 1, "text": "first"}).encode() + b"\r\n")
        f.write(json.dumps({"id": 2, "text": "second"}).encode() + b"\r\n")
    table = read(tmp_path, path=str(path), id_field="id")
    assert table.column("text").to_pylist() == ["first", "second"]
    assert table.column("reject_reason").null_count == 2
    for mode in ("lines", "file"):
        (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa plain text line\n")
        assert read(tmp_path, path=str(tmp_path / "bom.txt"), txt_mode=mode).column("text").to_pylist()[0].startswith("a plain")


def _real_lines(shared_data, count: int) -> list[str]:
    path = shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:count]


def test_parquet_columnar_reader_gives_the_rows_of_the_row_by_row_reader(tmp_path, shared_data):
    """The columnar parquet path builds the same rows (ids, meta, rejections, order) as
    `_record_row` one record at a time, on real text with every kind of bad row mixed in."""
    from common.readers import _parquet_rows, _rows_in_batches, read_file, split_parquet_files

    texts: list = _real_lines(shared_data, 3000)
    bad = {7: None, 8: "", 9: " \u3000\t\u2028\x1c", 10: "x" * 5000, 11: "\u3000 ok \u00a0"}
    for position, value in bad.items():
        texts[position] = value
    n = len(texts)
    ids = [f"doc{i}" if i % 5 else (None if i % 10 else "") for i in range(n)]
    table = pa.table({"id": ids, "text": texts, "url": [f"https://e.x/{i}" if i % 3 else None for i in range(n)],
                      "stars": list(range(n)), "tags": [["a", "b"] if i % 2 else [] for i in range(n)]})
    path = tmp_path / "reviews.parquet"
    pq.write_table(table, path, row_group_size=700)
    for spec in (InputSpec(path=str(path), id_field="id", source="rv", max_doc_bytes=4096, lang="zh"),
                 InputSpec(path=str(path), keep_meta=False, url_field=None)):
        [file] = expand_inputs([spec])
        columnar = pa.concat_tables(read_file(file, spec, batch_rows=512))
        rowwise = pa.concat_tables(_rows_in_batches(_parquet_rows(file, spec), 512, 1 << 30))
        assert columnar.num_rows == n
        assert columnar.to_pylist() == rowwise.to_pylist()
        reasons = dict(zip(columnar.column("id").to_pylist(), columnar.column("reject_reason").to_pylist()))
        assert sum(r is not None for r in reasons.values()) == (4 if spec.max_doc_bytes == 4096 else 3)
        # Parts of whole row groups: the same rows, ids numbered from each part's first row.
        parts = split_parquet_files([file], max(1, file.size // 3))
        assert len(parts) >= 3 and parts[0].first_row == 0
        assert [p.row_groups for p in parts][-1][1] == pq.ParquetFile(path).metadata.num_row_groups
        pieces = pa.concat_tables(t for part in parts for t in read_file(part, spec, batch_rows=512))
        assert pieces.to_pylist() == columnar.to_pylist()
