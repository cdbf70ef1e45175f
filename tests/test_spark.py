"""The Spark engine (`kiln run --engine spark`, pipeline/engines/spark.py) against the Ray engine.

The same config on both engines must give the same run: the same kept ids and the same
rejected (id, reject_op, reject_reason) in every stage, `kiln verify` passing, resume skipping
finished stages, and stats.json naming the engine. The demo comparison (the whole demo config,
every global operator) is marked slow; the operator-level comparisons run in seconds once
Spark is up. Every test here skips where Java 17+ or pyspark is missing.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from common import storage
from common.errors import ConfigError, KilnError, StageError
from operators.base import Mapper, Params
from operators.registry import register
from pipeline.config import parse_config
from pipeline.runner import RunRequest, run_pipeline

REPO = Path(__file__).resolve().parents[1]
ENGINES = ["ray", "spark"]


@pytest.fixture
def engine_run(tmp_path, request):
    """Run a config (a dict) on an engine into tmp_path/<engine>; returns (stats, run_dir)."""

    def run(data: dict, engine: str, **options):
        if engine == "spark":
            request.getfixturevalue("spark_local")
        else:
            request.getfixturevalue("ray_local")
        run_dir = tmp_path / engine
        data = {**data, "run": {**data.get("run", {}), "output": str(run_dir)}}
        stats = run_pipeline(parse_config(data), RunRequest(progress=False, engine=engine, **options),
                             echo=lambda _: None)
        return stats, run_dir

    return run


def outcomes(run_dir: Path) -> dict[str, tuple[list[str], list[tuple[str, str, str]]]]:
    """Per stage folder: the sorted kept ids and the sorted (id, reject_op, reject_reason)."""
    out = {}
    for stage in sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name[:2].isdigit()):
        kept = storage.read_table(stage / storage.DATA, ["id"]) if storage.parquet_files(stage / storage.DATA) else None
        rejected_dir = stage / storage.REJECTED
        rejected = (storage.read_table(rejected_dir, ["id", "reject_op", "reject_reason"])
                    if storage.parquet_files(rejected_dir) else None)
        out[stage.name] = (
            sorted(kept.column("id").to_pylist()) if kept is not None else [],
            sorted(zip(*(rejected.column(c).to_pylist() for c in ("id", "reject_op", "reject_reason"))))
            if rejected is not None else [],
        )
    return out


def _write_docs(path: Path, docs: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """Documents with exact duplicates, short ones, a repeated id and a malformed line."""
    docs = []
    for i in range(300):
        text = f"Document number {i} talks about topic {i % 7} with several words in a sentence."
        if i % 10 == 0:
            text = "tiny"
        if i % 13 == 0:
            text = "The same paragraph copied into several documents, word for word, again."
        docs.append({"id": str(i % 290), "text": text})  # ids 0..9 appear twice
    path = _write_docs(tmp_path / "docs.jsonl.gz", docs)
    with gzip.open(path, "at", encoding="utf-8") as f:
        f.write("{not json\n")
    return path


# --------------------------------------------------------------------------- configuration


def test_engine_key_is_validated_with_its_yaml_path():
    with pytest.raises(ConfigError, match=r"run\.engine"):
        parse_config({"run": {"engine": "flink"}, "inputs": [{"path": "x.jsonl"}],
                      "stages": [{"name": "s", "ops": [{"normalize": {}}]}]})
    config = parse_config({"run": {"engine": "spark"}, "inputs": [{"path": "x.jsonl"}],
                           "stages": [{"name": "s", "ops": [{"normalize": {}}]}]})
    assert config.run.engine == "spark"


def test_engine_flag_wins_over_the_config():
    from pipeline.engines import choose_engine

    config = parse_config({"run": {"engine": "spark"}, "inputs": [{"path": "x.jsonl"}],
                           "stages": [{"name": "s", "ops": [{"normalize": {}}]}]})
    assert choose_engine(config, RunRequest()) == "spark"
    assert choose_engine(config, RunRequest(engine="ray")) == "ray"


def test_java_version_is_read_from_java_dash_version():
    from pipeline.engines.spark import java_major

    assert java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert java_major('java version "1.8.0_392"') == 8
    assert java_major('openjdk version "21" 2023-09-19') == 21
    assert java_major("no java here") is None


def test_missing_java_is_one_line(monkeypatch, tmp_path):
    from pipeline.engines.spark import JAVA_HINT, check_java

    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(KilnError) as err:
        check_java()
    assert str(err.value) == JAVA_HINT and "\n" not in str(err.value)


def test_too_old_java_names_its_version(monkeypatch, tmp_path):
    from pipeline.engines.spark import check_java

    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'java version "1.8.0_392"\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(KilnError, match=r"needs Java 17\+.*Java 8"):
        check_java()


def test_spark_options_do_not_mix_with_ray_ones(tmp_path, small_corpus):
    from pipeline.engines.ray import RayEngine
    from pipeline.engines.spark import SparkEngine

    config = parse_config({"inputs": [{"path": str(small_corpus)}], "stages": [{"name": "s", "ops": [{"normalize": {}}]}]})
    with pytest.raises(KilnError, match="--engine spark"):
        RayEngine.start(config, RunRequest(master="spark://host:7077"))
    with pytest.raises(KilnError, match="--master"):
        SparkEngine.start(config, RunRequest(address="auto"))


def test_source_closed_groups_keep_colliding_ids_in_one_task():
    from types import SimpleNamespace

    from pipeline.engines.spark import source_closed_groups

    files = [SimpleNamespace(source=s) for s in ("web", "news", "web", "a", "a:b")]
    groups = source_closed_groups([(f, None) for f in files])
    assert [[f.source for f, _ in g] for g in groups] == [["web", "web"], ["news"], ["a", "a:b"]]


# --------------------------------------------------------------------------- both engines


@pytest.mark.spark
@pytest.mark.ray
def test_per_batch_operators_same_on_both_engines(engine_run, small_corpus):
    data = {"ray": {"num_cpus": 2, "batch_size": 64},
            "inputs": [{"path": str(small_corpus), "source": "t", "id_field": "id"}],
            "stages": [{"name": "clean", "ops": [{"normalize": {}}, {"length_filter": {"min_chars": 20}}]},
                       {"name": "words", "ops": [{"gopher_quality": {"min_words": 5}}]}]}
    results = {engine: engine_run(data, engine) for engine in ENGINES}
    ray_run, spark_run = (results[e][1] for e in ENGINES)
    assert outcomes(spark_run) == outcomes(ray_run)
    kept, rejected = outcomes(spark_run)["01-clean"]
    assert len(kept) + len(rejected) == 301 and "t:1#2" in kept  # the repeated id made unique
    assert ("t:docs.jsonl.gz:301", "read", "malformed_json") in rejected
    stats = results["spark"][0]
    assert stats["engine"] == "spark" and {s["engine"] for s in stats["stages"]} == {"spark"}
    assert results["ray"][0]["engine"] == "ray"
    # The same stats fields, whichever engine wrote them.
    assert set(stats["stages"][0]) == set(results["ray"][0]["stages"][0])
    assert stats["stages"][0]["ops"] and stats["stages"][0]["bytes_in"] == results["ray"][0]["stages"][0]["bytes_in"]


@pytest.mark.spark
@pytest.mark.ray
def test_global_operator_same_on_both_engines(engine_run, small_corpus):
    data = {"ray": {"num_cpus": 2, "batch_size": 64},
            "inputs": [{"path": str(small_corpus), "source": "t", "id_field": "id"}],
            "stages": [{"name": "dedup", "ops": [{"length_filter": {"min_chars": 20}}, {"exact_dedup": {}},
                                                 {"normalize": {}}]}]}
    results = {engine: engine_run(data, engine) for engine in ENGINES}
    ray_out, spark_out = (outcomes(results[e][1]) for e in ENGINES)
    assert spark_out == ray_out
    reasons = {r[1] for r in spark_out["01-dedup"][1]}
    assert {"exact_dedup", "length_filter", "read"} <= reasons
    extra = results["spark"][0]["stages"][0]["extra"]["exact_dedup"]
    assert extra["execution"] == "gathered" and extra == {**results["ray"][0]["stages"][0]["extra"]["exact_dedup"],
                                                          "wall_seconds": extra["wall_seconds"],
                                                          "phase_seconds": extra["phase_seconds"]}


@pytest.mark.spark
def test_spark_resume_skips_finished_stages_and_verify_passes(engine_run, small_corpus):
    from pipeline.verify import verify_run

    data = {"inputs": [{"path": str(small_corpus), "source": "t", "id_field": "id"}],
            "stages": [{"name": "a", "ops": [{"normalize": {}}]}, {"name": "b", "ops": [{"exact_dedup": {}}]}]}
    first, run_dir = engine_run(data, "spark", until="a")
    assert [s["folder"] for s in first["stages"]] == ["01-a"]
    run_id = first["stages"][0]["run_id"]
    second, _ = engine_run(data, "spark")
    assert second["stages"][0]["run_id"] == run_id  # stage a not run again
    assert [s["folder"] for s in second["stages"]] == ["01-a", "02-b"]
    assert all(check.ok for check in verify_run(run_dir))


@pytest.mark.spark
def test_spark_run_folder_behind_a_uri(spark_local, small_corpus, tmp_path):
    """A run folder given as a URI goes through kiln's storage layer, as on Ray."""
    from pipeline.verify import verify_run

    run_dir = tmp_path / "uri-run"
    data = {"run": {"output": run_dir.as_uri()}, "inputs": [{"path": small_corpus.as_uri(), "id_field": "id"}],
            "stages": [{"name": "clean", "ops": [{"length_filter": {"min_chars": 20}}]},
                       {"name": "dedup", "ops": [{"exact_dedup": {}}]}]}
    stats = run_pipeline(parse_config(data), RunRequest(progress=False, engine="spark"), echo=lambda _: None)
    assert [s["docs_in"] for s in stats["stages"]] == [301, 273]
    assert list(stats["stages"][1]["rejected"]) == ["exact_dedup/duplicate"]
    assert all(check.ok for check in verify_run(run_dir))


@pytest.mark.spark
def test_spark_over_the_memory_budget_stops_naming_the_operator(engine_run, small_corpus):
    data = {"ray": {"global_memory": 10},
            "inputs": [{"path": str(small_corpus), "source": "t", "id_field": "id"}],
            "stages": [{"name": "dedup", "ops": [{"exact_dedup": {}}]}]}
    with pytest.raises(KilnError, match=r"exact_dedup: .*ray\.global_memory.*--engine ray"):
        engine_run(data, "spark")


@pytest.mark.spark
def test_spark_refuses_gpu_operators_with_their_yaml_path(engine_run, small_corpus):
    data = {"inputs": [{"path": str(small_corpus)}],
            "stages": [{"name": "s", "ops": [{"op": "normalize", "resources": {"num_gpus": 1}}]}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops\[0\].*GPU.*--engine ray"):
        engine_run(data, "spark")


class _BoomParams(Params):
    when: str = ""  # every document: a bug, not one document the operator cannot handle


@register
class _Boom(Mapper):
    """Fails on every document whose text contains `when`: an operator bug in a worker."""

    name = "test_spark_boom"
    Params = _BoomParams

    def map(self, batch: pa.Table) -> pa.Table:
        if any(self.params.when in (t or "") for t in batch.column("text").to_pylist()):
            raise ValueError("an operator bug, on purpose")
        return batch


@pytest.mark.spark
def test_spark_task_failure_is_one_line_and_keeps_nothing(engine_run, tmp_path):
    path = _write_docs(tmp_path / "boom.jsonl.gz", [{"text": f"fine document {i}"} for i in range(50)]
                       + [{"text": "this one goes boom"}])
    data = {"inputs": [{"path": str(path)}],
            "stages": [{"name": "ok", "ops": [{"normalize": {}}]}, {"name": "bad", "ops": [{"test_spark_boom": {}}]}]}
    with pytest.raises(StageError) as err:
        engine_run(data, "spark")
    message = str(err.value)
    assert "stage 02-bad failed" in message and "failed on all" in message
    assert "ValueError: an operator bug, on purpose" in message
    assert "\n" not in message
    run_dir = tmp_path / "spark"
    assert storage.is_finished(run_dir / "01-ok") and not (run_dir / "02-bad").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(storage.TMP_PREFIX)]


# --------------------------------------------------------------------------- the demo


def _demo_inputs(tmp_path_factory) -> Path:
    """The demo corpus: the checkout's data/demo if made (`make sample`), else a fresh one."""
    if (REPO / "data" / "demo" / "truth.jsonl").is_file():
        return REPO / "data" / "demo"
    from pipeline.sample import generate

    out = tmp_path_factory.mktemp("demo-data")
    generate(out)
    return out


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.ray
def test_demo_config_same_kept_and_rejected_on_spark_and_ray(engine_run, tmp_path_factory):
    models = REPO / "models"
    needed = [models / "lm" / "zh.binary", models / "lm" / "en.binary", models / "quality.ftz",
              models / "tokenizer" / "demo" / "tokenizer.json"]
    missing = [str(p.relative_to(REPO)) for p in needed if not p.exists()]
    if missing:
        pytest.skip(f"the demo's models are missing ({', '.join(missing)}): make lm-models tokenizer")
    import yaml

    data_dir = _demo_inputs(tmp_path_factory)
    text = (REPO / "configs" / "pipeline" / "demo.yaml").read_text()
    text = text.replace("data/demo/", f"{data_dir}/").replace("models/", f"{models}/")
    data = yaml.safe_load(text)
    results = {engine: engine_run(data, engine) for engine in ENGINES}
    ray_out, spark_out = (outcomes(results[e][1]) for e in ENGINES)
    assert list(spark_out) == list(ray_out) == ["01-normalize", "02-filter", "03-dedup", "04-score", "05-bucket",
                                                "06-pack"]
    for stage in ray_out:
        assert spark_out[stage][0] == ray_out[stage][0], f"{stage}: kept ids differ"
        assert spark_out[stage][1] == ray_out[stage][1], f"{stage}: rejections differ"
    from pipeline.verify import verify_run

    assert all(check.ok for check in verify_run(results["spark"][1]))
    # The same shards in total: the manifests agree on documents and tokens.
    manifests = {e: json.loads((results[e][1] / "shards" / "manifest.json").read_text()) for e in ENGINES}
    for key in ("documents", "tokens_by_bucket", "tokens_by_source", "tokens_by_lang"):
        assert manifests["spark"][key] == manifests["ray"][key], key
    buckets = {e: pc.value_counts(storage.read_table(results[e][1] / "05-bucket" / "data", ["bucket"])
                                  .column("bucket")).to_pylist() for e in ENGINES}
    assert sorted(map(str, buckets["spark"])) == sorted(map(str, buckets["ray"]))
    shutil.rmtree(results["ray"][1], ignore_errors=True)
