"""Run folders behind filesystem URIs (here file://, the same code path as s3:// or gs://):
stages written through pyarrow.fs, published by copy with `_SUCCESS` last, resumed, verified."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from common import storage
from pipeline.verify import verify_run

pytestmark = pytest.mark.ray


@pytest.fixture
def docs(tmp_path):
    path = tmp_path / "in.jsonl"
    with open(path, "w") as f:
        for i in range(400):
            f.write(json.dumps({"id": f"d{i}", "text": "word " * (i % 90)}) + "\n")
    return path


def config(docs, output: str) -> dict:
    return {"run": {"name": "uri", "output": output}, "ray": {"batch_size": 64},
            "inputs": [{"path": docs.as_uri(), "id_field": "id"}],
            "stages": [{"name": "clean", "ops": [{"normalize": {}}, {"length_filter": {"min_chars": 40}}]},
                       {"name": "filter", "ops": [{"exact_dedup": {}}, {"length_filter": {"min_chars": 200}}]}]}


def run(data: dict, **request):
    from pipeline.config import parse_config
    from pipeline.runner import RunRequest, run_pipeline

    return run_pipeline(parse_config(data), RunRequest(progress=False, **request), echo=lambda _: None)


def test_inputs_behind_uris_read_like_local_files(docs, tmp_path):
    import gzip

    from common.errors import InputError
    from common.readers import read_inputs
    from pipeline.config import parse_inputs

    folder = tmp_path / "uri-in"
    folder.mkdir()
    (folder / "a.jsonl.gz").write_bytes(gzip.compress(docs.read_bytes()))
    (folder / "b.txt").write_text("one line\nanother line\n")
    (folder / ".hidden.txt").write_text("never read\n")
    local = pa.concat_tables(read_inputs(parse_inputs([{"path": str(folder)}])))
    uri = pa.concat_tables(read_inputs(parse_inputs([{"path": folder.as_uri()}])))
    assert uri.num_rows == local.num_rows == 402
    assert sorted(uri.column("id").to_pylist()) == sorted(local.column("id").to_pylist())
    globbed = pa.concat_tables(read_inputs(parse_inputs([{"path": folder.as_uri() + "/*.txt"}])))
    assert globbed.num_rows == 2
    with pytest.raises(InputError, match=r"inputs\[0\]\.path: .*missing does not exist"):
        list(read_inputs(parse_inputs([{"path": (tmp_path / "missing").as_uri()}])))


def test_a_uri_run_folder_is_written_resumed_and_verified(ray_local, docs, tmp_path):
    uri = (tmp_path / "out").as_uri()
    stats = run(config(docs, uri), until="clean")
    first_id = stats["stages"][0]["run_id"]
    assert stats["run_dir"] == uri
    stats = run(config(docs, uri))
    assert stats["stages"][0]["run_id"] == first_id  # finished stage skipped on the URI too
    assert [c.ok for c in verify_run(uri)] == [True, True]
    local = tmp_path / "out"
    assert (local / "02-filter" / "_SUCCESS").exists() and not list(local.glob(".tmp-*"))
    # The same run as a local folder gives the same rows.
    run(config(docs, str(tmp_path / "plain")))
    for stage in ("01-clean", "02-filter"):
        a = storage.read_table(storage.location(f"{uri}/{stage}/data")).sort_by("id")
        b = storage.read_table(tmp_path / "plain" / stage / "data").sort_by("id")
        assert a.column("id").equals(b.column("id")) and a.num_rows > 0


def test_publishing_by_copy_writes_success_last_and_replaces_an_old_copy(tmp_path, monkeypatch):
    base = storage.location((tmp_path / "run").as_uri())
    old, new = base / "01-a", base / ".tmp-01-a-x"
    storage.write_parquet_atomic(pa.table({"id": ["old"]}), old / "data" / "p.parquet")
    storage.write_json(old / "stats.json", {"v": 1})
    (old / "_SUCCESS").write_text("old\n")
    storage.write_parquet_atomic(pa.table({"id": ["n1", "n2"]}), new / "data" / "p.parquet")
    storage.write_json(new / "stats.json", {"v": 2})
    (new / "_SUCCESS").write_text("new\n")

    order: list[str] = []
    real_copy = storage._copy_file

    def record(fs, src, dst):
        order.append(dst.rsplit("/", 1)[-1])
        assert not storage.is_finished(old)  # never finished while its files change
        return real_copy(fs, src, dst)

    monkeypatch.setattr(storage, "_copy_file", record)
    storage.publish(new, old)
    assert storage.is_finished(old) and storage.read_json(old / "stats.json") == {"v": 2}
    assert storage.count_rows(old / "data") == 2 and not new.exists()
    assert sorted(order) == ["p.parquet", "stats.json"]  # _SUCCESS is not copied among them: written last
    assert (old / "rejected").is_dir()


def test_a_copy_cut_short_leaves_an_unfinished_stage(tmp_path, monkeypatch):
    base = storage.location((tmp_path / "run").as_uri())
    final, tmp = base / "01-a", base / ".tmp-01-a-y"
    storage.write_json(final / "stats.json", {"v": 1})
    (final / "_SUCCESS").write_text("old\n")
    storage.write_parquet_atomic(pa.table({"id": ["n"]}), tmp / "data" / "p.parquet")
    storage.write_json(tmp / "stats.json", {"v": 2})
    (tmp / "_SUCCESS").write_text("new\n")

    def crash(*_args, **_kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(storage, "_copy_file", crash)
    with pytest.raises(OSError):
        storage.publish(tmp, final)
    assert not storage.is_finished(final)  # the old copy stopped counting before the copy
    assert storage.clean_stale_tmp(base) == [".tmp-01-a-y"]


def test_packing_into_a_uri_run_folder_is_refused_with_the_yaml_path(docs, tmp_path):
    from common.errors import KilnError

    data = config(docs, (tmp_path / "out").as_uri())
    data["stages"].append({"name": "pack", "ops": [{"tokenize_pack": {"tokenizer": str(tmp_path / "tok")}}]})
    with pytest.raises(KilnError, match=r"stages\[2\]\.ops\[0\]\.tokenize_pack: writes Arrow shards"):
        run(data)
