"""End to end through a local Ray: staged runs, accounting, resume, analyze, failures, global ops."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from common import storage
from common.errors import KilnError, StageError
from operators.base import GlobalOperator, Mapper, Params
from operators.registry import register
from pipeline.engines import ray as ray_engine
from pipeline.global_ops import global_executor, mark_rejected
from pipeline.verify import verify_run

pytestmark = pytest.mark.ray


@pytest.fixture
def corpus(tmp_path, shared_data):
    """Real reviews and web text, plus a JSONL file with malformed records."""
    reviews = (shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt").read_text().splitlines()[:400]
    web = (shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt").read_text().splitlines()[:300]
    (tmp_path / "in").mkdir()
    (tmp_path / "in/reviews.txt").write_text("\n".join(reviews) + "\n")
    with open(tmp_path / "in/web.jsonl", "wb") as f:
        for i, line in enumerate(web):
            f.write(json.dumps({"id": f"w{i}", "text": line}, ensure_ascii=False).encode() + b"\n")
        f.write(b'{"id": "broken", "text": \n')
        f.write(b'{"id": "bytes", "text": "\xff\xfe"}\n')
        f.write(b'{"id": "notext"}\n')
    return tmp_path / "in"


def pipeline_config(corpus, **extra_stages):
    return {
        "run": {"name": "t"},
        "ray": {"batch_size": 128},
        "inputs": [{"path": str(corpus / "reviews.txt"), "source": "reviews"},
                   {"path": str(corpus / "web.jsonl"), "source": "web", "id_field": "id"}],
        "stages": [
            {"name": "clean", "ops": [{"normalize": {}}, {"length_filter": {"min_chars": 20}}]},
            {"name": "filter", "ops": [{"length_filter": {"min_chars": 60, "max_chars": 3000}}]},
        ],
    }


def stage_tables(run_dir, folder):
    return storage.read_table(run_dir / folder / "data"), storage.read_table(run_dir / folder / "rejected")


def test_every_document_is_kept_or_rejected_with_operator_and_reason(run_config, corpus):
    stats, run_dir = run_config(pipeline_config(corpus))
    first, second = stats["stages"]
    assert first["docs_in"] == 400 + 300 + 3
    assert first["rejected"]["read/malformed_json"] == 1
    assert first["rejected"]["read/invalid_utf8"] == 1
    assert first["rejected"]["read/missing_text"] == 1
    for st in stats["stages"]:
        assert st["docs_in"] == st["docs_out"] + st["rejected_total"]
        assert st["bytes_in"] >= st["bytes_out"] > 0
    assert second["docs_in"] == first["docs_out"]
    ops = {op["label"]: op for op in first["ops"]}
    assert ops["length_filter"]["docs_in"] == ops["normalize"]["docs_out"] == first["docs_out"] + ops["length_filter"]["rejected"]
    kept, rejected = stage_tables(run_dir, "02-filter")
    assert set(rejected.column("reject_reason").to_pylist()) <= {"too_short", "too_long"}
    assert pc.min(pc.utf8_length(kept.column("text"))).as_py() >= 60
    assert "stat.chars" in kept.column_names
    checks = verify_run(run_dir)
    assert [c.ok for c in checks] == [True, True], [c.problems for c in checks]


def test_resume_skips_the_finished_stage_and_gives_identical_results(run_config, corpus):
    config = pipeline_config(corpus)
    stats, run_dir = run_config(config, until="clean")
    assert [s["name"] for s in stats["stages"]] == ["clean"]
    first_run_id = stats["stages"][0]["run_id"]
    before = stage_tables(run_dir, "01-clean")

    stats, _ = run_config(config)  # the rest of the pipeline
    assert stats["stages"][0]["run_id"] == first_run_id  # stage 1 was skipped, not rerun
    after_full, _ = stage_tables(run_dir, "02-filter")

    fresh_dir = run_dir.parent / "fresh"
    shutil.copytree(run_dir, fresh_dir)
    shutil.rmtree(run_dir)
    stats, run_dir = run_config(config)  # from scratch
    assert before[0].equals(stage_tables(run_dir, "01-clean")[0])
    assert after_full.equals(stage_tables(run_dir, "02-filter")[0])


def test_changed_config_reruns_that_stage_and_later_ones(run_config, corpus):
    config = pipeline_config(corpus)
    stats, _ = run_config(config)
    ids = [s["run_id"] for s in stats["stages"]]
    config["stages"][1]["ops"][0]["length_filter"]["min_chars"] = 80
    stats, run_dir = run_config(config)
    assert stats["stages"][0]["run_id"] == ids[0]
    assert stats["stages"][1]["run_id"] != ids[1]
    kept, _ = stage_tables(run_dir, "02-filter")
    assert pc.min(pc.utf8_length(kept.column("text"))).as_py() >= 80


def test_one_stage_needs_its_input_finished(run_config, corpus):
    with pytest.raises(KilnError, match="needs stage 'clean' finished first"):
        run_config(pipeline_config(corpus), only_stage="filter")


def test_analyze_computes_statistics_and_drops_only_unreadable_records(run_config, corpus):
    stats, run_dir = run_config(pipeline_config(corpus), analyze=True)
    first = stats["stages"][0]
    assert set(first["rejected"]) == {"read/malformed_json", "read/invalid_utf8", "read/missing_text"}
    assert first["would_reject"]["length_filter/too_short"] > 0
    kept, _ = stage_tables(run_dir / "analyze", "01-clean")
    assert "stat.chars" in kept.column_names and "would_reject" in kept.column_names
    assert not (run_dir / "01-clean").exists()  # analyze never touches the real run


class ExplodeParams(Params):
    after: int = 0


@register
class ExplodeOnPurpose(Mapper):
    """Simulates an operator bug halfway through a stage."""

    name = "test_explode"
    Params = ExplodeParams

    def map(self, batch: pa.Table) -> pa.Table:
        raise RuntimeError("simulated crash")


def test_a_failing_stage_leaves_no_finished_folder_and_keeps_earlier_stages(run_config, corpus):
    config = pipeline_config(corpus)
    config["stages"][1]["ops"].append({"test_explode": {}})
    with pytest.raises(StageError, match=r"stage 02-filter failed.*simulated crash"):
        run_config(config)
    run_dir = next(p for p in corpus.parent.iterdir() if p.name == "run")
    assert storage.is_finished(run_dir / "01-clean")
    assert not (run_dir / "02-filter").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".tmp-")]
    assert [s["name"] for s in json.loads((run_dir / "stats.json").read_text())["stages"]] == ["clean"]


@register
class SameLengthDedup(GlobalOperator):
    """A test global operator: keeps one document per text length (lowest id)."""

    name = "test_same_length"


@global_executor("test_same_length")
def _run_same_length(op, ds, ctx):
    def keys(batch: pa.Table) -> pa.Table:
        return pa.table({"id": batch.column("id"), "n": pc.utf8_length(batch.column("text"))})

    def survivors(group: pa.Table) -> pa.Table:
        ids = sorted(group.column("id").to_pylist())
        dups = ids[1:]
        return pa.table({"id": pa.array(dups, pa.string()), "reason": pa.array(["same_length"] * len(dups), pa.string()),
                         "detail": pa.array([None] * len(dups), pa.string()), "dup_of": pa.array([ids[0]] * len(dups), pa.string())})

    ctx.extra["groups"] = len(ds.map_batches(keys, batch_format="pyarrow").unique("n"))
    decisions = ds.map_batches(keys, batch_format="pyarrow").groupby("n").map_groups(survivors, batch_format="pyarrow")
    return mark_rejected(ds, decisions, op.label, ctx)


def test_a_global_operator_sees_the_whole_stage_and_accounting_holds(run_config, corpus):
    config = pipeline_config(corpus)
    config["stages"][1]["ops"].insert(0, {"test_same_length": {}})
    stats, run_dir = run_config(config)
    second = stats["stages"][1]
    kept, rejected = stage_tables(run_dir, "02-filter")
    lengths = pc.utf8_length(kept.column("text")).to_pylist()
    assert len(lengths) == len(set(lengths))  # one survivor per length across all blocks
    dups = rejected.filter(pc.equal(rejected.column("reject_op"), "test_same_length"))
    assert dups.num_rows == second["rejected"]["test_same_length/same_length"] > 0
    assert all(d < i for d, i in zip(dups.column("dup_of").to_pylist(), dups.column("id").to_pylist()))
    op_stats = {op["label"]: op for op in second["ops"]}["test_same_length"]
    assert second["extra"]["test_same_length"]["groups"] == op_stats["docs_out"]
    assert all(c.ok for c in verify_run(run_dir))


def test_verify_catches_a_lost_document(run_config, corpus):
    _, run_dir = run_config(pipeline_config(corpus))
    data_file = storage.parquet_files(run_dir / "02-filter" / "data")[0]
    table = pq.read_table(data_file)
    pq.write_table(table.slice(1), data_file)
    checks = verify_run(run_dir)
    assert checks[0].ok and not checks[1].ok
    assert any("neither kept nor rejected" in p for p in checks[1].problems)


def test_only_gpu_operators_run_as_actor_pools_which_leave_a_cpu_for_reading():
    from operators.base import Mapper as _Mapper
    from pipeline.config import OpSpec, Resources
    from pipeline.engines.ray import actor_cpu_cap

    class Model(_Mapper):
        name = "test_model"

        def setup(self):
            pass

    def spec(**res):
        return OpSpec(name="x", params={}, resources=Resources(**res), where="x")

    two_models = [(Model(), spec()), (Model(), spec()), (ExplodeOnPurpose(), spec())]
    assert actor_cpu_cap(two_models, 2) is None  # CPU model operators run in the fused tasks
    assert actor_cpu_cap([(ExplodeOnPurpose(), spec())], 2) is None
    assert actor_cpu_cap([(ExplodeOnPurpose(), spec(num_gpus=1))], 2) == 1.0
    two_gpu_models = [(Model(), spec(num_gpus=1)), (Model(), spec(num_gpus=1))]
    assert actor_cpu_cap(two_gpu_models, 2) == 0.5  # two 1-CPU actors on 2 CPUs would starve the reads
    assert actor_cpu_cap(two_gpu_models, 9) == 4.0


def test_a_model_operator_loads_once_per_process_and_lets_go_of_a_finished_stage():
    from operators.base import Mapper as _Mapper
    from operators.base import set_up_in_process

    loads = []

    class Model(_Mapper):
        name = "test_model_once"

        def setup(self):
            loads.append(self.params.model_dump_json())

        def map(self, batch):
            return batch

    import copy

    stage = [Model(), ExplodeOnPurpose()]
    for _ in range(3):  # three batches, each with its own copy of the chain (as a Ray task gets)
        chain = set_up_in_process(copy.deepcopy(stage))
        assert isinstance(chain[1], ExplodeOnPurpose)
    assert len(loads) == 1
    first = chain[0]
    set_up_in_process([ExplodeOnPurpose()])  # the next stage, without the model
    assert set_up_in_process(copy.deepcopy(stage))[0] is not first
    assert len(loads) == 2


def test_an_operator_no_node_can_hold_is_refused_with_its_yaml_path():
    from pipeline.config import OpSpec, Resources
    from pipeline.engines.ray import check_fits

    spec = OpSpec(name="x", params={}, resources=Resources(num_gpus=1), where="stages[2].ops[0].perplexity")
    cpu_nodes = [{"CPU": 2.0, "memory": 8e9}, {"CPU": 1.0, "memory": 4e9}]
    with pytest.raises(StageError, match=r"stages\[2\]\.ops\[0\]\.perplexity: each task asks for 1 CPU, 1 GPU.*"
                                         r"the largest has 2 CPU, 0 GPU"):
        check_fits(spec, 1.0, 1.0, None, cpu_nodes)
    check_fits(spec, 1.0, 1.0, None, [*cpu_nodes, {"CPU": 8.0, "GPU": 1.0}])  # a GPU node: fine
    check_fits(spec, 2.0, 0, 6 << 30, cpu_nodes)  # CPUs and memory fit on the first node
    with pytest.raises(StageError, match="3 CPU"):
        check_fits(spec, 3.0, 0, None, cpu_nodes)


def test_an_unreachable_cluster_address_fails_fast():
    import socket
    import time

    from pipeline.engines.ray import check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(KilnError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(KilnError, match="cannot reach"):
        check_reachable(f"ray://127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    check_reachable("auto")  # left to Ray


@pytest.mark.parametrize("read_tasks", ["one", "several"])
def test_repeated_ids_across_files_and_read_tasks_become_unique_and_dedup_adds_up(run_config, tmp_path, shared_data,
                                                                                 monkeypatch, read_tasks):
    """Issue 17 item 1: the same id twice (two identical lines, and in two files read by
    different tasks) was kept twice by stage 1, then exact_dedup said `25 in -> 25 kept,
    2 rejected` and `kiln run` exited 0. One read task keeps the claims itself; several ask
    one IdClaims actor, each batch's claim overlapping the next batch's read (issue 14)."""
    if read_tasks == "several":
        monkeypatch.setattr(ray_engine, "MIN_READ_BYTES", 1)  # every file its own read task
    lines = (shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt").read_text().splitlines()[:20]
    (tmp_path / "in").mkdir()
    records = [json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(lines)]
    (tmp_path / "in/a.jsonl").write_text("\n".join(records + records[:2]) + "\n")
    (tmp_path / "in/b.jsonl").write_text("\n".join(records[:3]) + "\n")
    config = {"ray": {"batch_size": 4},
              "inputs": [{"path": str(tmp_path / "in"), "source": "web", "id_field": "id"}],
              "stages": [{"name": "read", "ops": [{"normalize": {}}]},
                         {"name": "dedup", "ops": [{"exact_dedup": {}}]}]}
    stats, run_dir = run_config(config)
    second = stats["stages"][1]
    ids = storage.read_table(run_dir / "01-read/data", ["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 25
    assert sum(i.endswith("#2") for i in ids) == 3 and sum(i.endswith("#3") for i in ids) == 2
    assert (second["docs_in"], second["docs_out"], second["rejected_total"]) == (25, 20, 5)
    assert all(c.ok for c in verify_run(run_dir)), [c.problems for c in verify_run(run_dir)]


@register
class DoubleRows(GlobalOperator):
    """A buggy global operator: returns every row twice."""

    name = "test_double_rows"


@global_executor("test_double_rows")
def _run_double_rows(op, ds, ctx):
    return ds.union(ds)


def test_a_stage_whose_counts_do_not_add_up_fails_and_is_not_published(run_config, corpus):
    config = pipeline_config(corpus)
    config["stages"][1]["ops"].insert(0, {"test_double_rows": {}})
    with pytest.raises(StageError, match=r"stage 02-filter does not add up.*in but .* kept \+ .* rejected"):
        run_config(config)
    run_dir = next(p for p in corpus.parent.iterdir() if p.name == "run")
    assert storage.is_finished(run_dir / "01-clean") and not (run_dir / "02-filter").exists()


def test_progress_lines_name_the_stage_documents_rate_and_eta(tmp_path, ray_local, corpus):
    import chaos_ops  # noqa: F401  (registers chaos_slow: a stage long enough for progress lines)

    from pipeline.config import parse_config
    from pipeline.runner import RunRequest, run_pipeline

    data = pipeline_config(corpus)
    data["run"]["output"] = str(tmp_path / "run")
    data["ray"]["batch_size"] = 16
    for stage in data["stages"]:
        stage["ops"].insert(0, {"chaos_slow": {"seconds_per_batch": 0.1}})
    lines: list[str] = []
    stats = run_pipeline(parse_config(data), RunRequest(progress=True, progress_interval=0.3), echo=lines.append)
    progress = [line.strip() for line in lines if "docs/s" in line]
    # The first stage cannot know its document count: text read and MB/s instead.
    assert any(line.startswith("01-clean:") and "MB of text" in line for line in progress), progress
    # A later stage expects the documents the stage before kept.
    expected = f"/ {stats['stages'][0]['docs_out']:,} docs"
    assert any(line.startswith("02-filter:") and expected in line and "%" in line for line in progress), progress
    # One counter serves every write of the run (issue 14), zeroed before each: the second
    # stage never counts the first stage's rows.
    done = [int(line.split(": ")[1].split(" / ")[0].replace(",", "")) for line in progress
            if line.startswith("02-filter:")]
    assert max(done) <= stats["stages"][0]["docs_out"], progress


class BatchRowsParams(Params):
    column: str = "rows_seen"


@register
class RecordBatchRows(Mapper):
    """Writes into a column how many rows the batch it was given had."""

    name = "test_record_batch_rows"
    Params = BatchRowsParams

    def map(self, batch: pa.Table) -> pa.Table:
        return batch.append_column(self.params.column, pa.array([batch.num_rows] * batch.num_rows, pa.int64()))


def test_fused_operators_keep_each_operators_batch_size(run_config, corpus):
    """Issue 14: consecutive plain-task operators run as one map_batches call; one that asks
    for its own batch size is not fused with its neighbours and gets batches of that size."""
    config = pipeline_config(corpus)
    config["ray"]["batch_size"] = 16
    config["stages"] = [{"name": "one", "ops": [
        {"test_record_batch_rows": {"column": "a"}},
        {"test_record_batch_rows": {"column": "b"}},
        {"op": "test_record_batch_rows", "params": {"column": "small"}, "resources": {"batch_size": 5}},
        {"test_record_batch_rows": {"column": "c"}},
    ]}]
    stats, run_dir = run_config(config)
    table = storage.read_table(run_dir / "01-one/data", ["a", "b", "small", "c"])
    sizes = {name: pc.max(table.column(name)).as_py() for name in table.column_names}
    assert sizes == {"a": 16, "b": 16, "small": 5, "c": 16}, sizes
    assert stats["stages"][0]["docs_in"] == stats["stages"][0]["docs_out"] + stats["stages"][0]["rejected_total"]


@pytest.mark.parametrize("read_tasks", ["one", "several"])
def test_a_first_stage_starting_with_dedup_reads_the_inputs_in_place_with_the_same_ids(
        run_config, tmp_path, shared_data, monkeypatch, read_tasks, engine):
    """A stage 1 that starts with a gathered operator reads the input files in place (no
    scratch copy): the ids are claimed on the first read and replayed on the next, so
    repeats get the same `#2`/`#3` names, the decisions land on the right rows, and every
    row is accounted for once."""
    if read_tasks == "several":
        monkeypatch.setattr(ray_engine, "MIN_READ_BYTES", 1)  # every file its own read task
    lines = (shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt").read_text().splitlines()[:20]
    (tmp_path / "in").mkdir()
    records = [json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) for i, t in enumerate(lines)]
    (tmp_path / "in/a.jsonl").write_text("\n".join(records + records[:2] + ["{not json"]) + "\n")
    (tmp_path / "in/b.jsonl").write_text("\n".join(records[:3]) + "\n")
    config = {"ray": {"batch_size": 4},
              "inputs": [{"path": str(tmp_path / "in"), "source": "web", "id_field": "id"}],
              "stages": [{"name": "dedup", "ops": [{"exact_dedup": {}}, {"minhash_dedup": {}}]}]}
    stats, run_dir = run_config(config, engine=engine)
    stage = stats["stages"][0]
    assert (stage["docs_in"], stage["docs_out"], stage["rejected_total"]) == (26, 20, 6)
    assert stage["rejected"] == {"exact_dedup/duplicate": 5, "read/malformed_json": 1}
    kept = storage.read_table(run_dir / "01-dedup/data", ["id", "text"])
    rejected = storage.read_table(run_dir / "01-dedup/rejected", ["id", "text", "dup_of"])
    ids = kept.column("id").to_pylist() + rejected.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 26
    assert sum(i.endswith("#2") for i in ids) == 3 and sum(i.endswith("#3") for i in ids) == 2
    # Each rejected copy names a kept row with its very text: decisions hit the rows they name.
    text_of = dict(zip(kept.column("id").to_pylist(), kept.column("text").to_pylist()))
    for row in rejected.to_pylist():
        if row["dup_of"] is not None:
            assert text_of[row["dup_of"]] == row["text"]
    assert all(c.ok for c in verify_run(run_dir)), [c.problems for c in verify_run(run_dir)]
