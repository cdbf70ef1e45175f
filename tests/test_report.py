"""`kiln report`: the numbers on the page against the run folder they come from.

Unit tests cover the pieces that need no Ray (histogram bins, row sampling, character
tallies, thresholds, the binomial bound, HTML escaping on a hand-made run). The end-to-end
tests run a real two-stage pipeline over real Chinese and English text (../shared/data), then
a copy with a synthesized scoring stage written the way kiln's dedup, perplexity, bucketing,
sensitive-word and tokenize_pack operators leave their results (see report_runs.py), so
every section of the report is checked.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import report_runs

from common import storage
from common.errors import KilnError
from pipeline.cli import main
from pipeline.report import ReportOptions, build_report, write_report
from pipeline.report.data import HistogramBuilder, file_batches, histogram, take_rows, tally
from pipeline.report.eval import (
    DEFAULT_THRESHOLDS,
    EvalOptions,
    binomial_upper_bound,
    docs_needed,
    parse_thresholds,
)

SECTION_IDS = ["overview", "funnel", "mix", "evaluation", "statistics", "dedup", "perplexity", "buckets",
               "shards", "stages", "config"]
RATE_COLUMNS = ["stat.rate_privacy", "stat.rate_toxic", "stat.rate_ad", "stat.rate_html"]


# --------------------------------------------------------------------------- pieces


def test_histogram_small_integer_range_gets_one_bin_per_value():
    h = histogram(np.array([0, 1, 1, 2, 2, 2], float), np.array([5, 5], float))
    assert h["edges"] == [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert h["kept"] == [1, 2, 3, 0, 0, 0]
    assert h["rejected"] == [0, 0, 0, 0, 0, 2]
    assert h["summary_kept"]["p50"] == 1.5


def test_histogram_wide_positive_range_is_log_and_keeps_every_value():
    rng = np.random.default_rng(1)
    kept = rng.lognormal(3, 2.5, 5000)
    rejected = np.concatenate([rng.lognormal(8, 1, 300), [np.nan, np.inf]])
    h = histogram(kept, rejected)
    assert h["scale"] == "log"
    assert sum(h["kept"]) == 5000 and sum(h["rejected"]) == 300  # outliers land in the end bins
    assert h["below_range"] + h["above_range"] > 0
    assert h["count_rejected"] == 300


def test_histogram_of_nothing_or_one_value():
    assert histogram(np.array([]), np.array([]))["edges"] == []
    h = histogram(np.array([3.0, 3.0]), np.array([]))
    assert h["kept"] == [2] and h["rejected"] == [0]


def _streamed(kept: np.ndarray, rejected: np.ndarray, sample: int, batch: int) -> dict:
    """HistogramBuilder fed the way the report feeds it: batches, then a counting pass."""
    builder = HistogramBuilder(sample, seed=0, name="x")
    for side, values in (("kept", kept), ("rejected", rejected)):
        for chunk in np.array_split(values, max(1, len(values) // batch)):
            builder.add(side, chunk)
    if builder.needs_counting:
        builder.edges()
        for side, values in (("kept", kept), ("rejected", rejected)):
            for chunk in np.array_split(values, 7):
                builder.count_values(side, chunk)
    return builder.result()


def test_streamed_histogram_is_exact_within_the_sample_and_counts_exactly_beyond_it():
    rng = np.random.default_rng(2)
    kept = np.concatenate([rng.lognormal(5, 1, 20_000), [np.nan]])
    rejected = rng.lognormal(3, 1, 3_000)
    # Every value fits the sample: the very same result as the whole columns give.
    assert _streamed(kept, rejected, sample=50_000, batch=999) == histogram(kept, rejected)
    # A sample of 500 per side: counts, mean, min and max stay exact; edges and quantiles are
    # close to the exact ones, and the result says it was sampled.
    exact = histogram(kept, rejected)
    h = _streamed(kept, rejected, sample=500, batch=999)
    assert h["sample"] == {"kept": 500, "rejected": 500}
    assert (h["count_kept"], h["count_rejected"]) == (20_000, 3_000)
    assert sum(h["kept"]) == 20_000 and sum(h["rejected"]) == 3_000
    assert h["scale"] == exact["scale"] == "log" and len(h["edges"]) == len(exact["edges"])
    finite = kept[np.isfinite(kept)]
    assert h["summary_kept"]["mean"] == pytest.approx(finite.mean(), rel=1e-12)
    assert (h["summary_kept"]["min"], h["summary_kept"]["max"]) == (finite.min(), finite.max())
    assert h["summary_kept"]["p50"] == pytest.approx(exact["summary_kept"]["p50"], rel=0.1)
    assert h["edges"][-1] == pytest.approx(exact["edges"][-1], rel=0.3)
    both = np.concatenate([finite, rejected])
    assert h["below_range"] == int((both < h["edges"][0]).sum())
    assert h["above_range"] == int((both > h["edges"][-1]).sum())
    # The sample depends on the seed and the column, not on how the stream was cut (the
    # mean's sum only up to rounding).
    other = _streamed(kept, rejected, sample=500, batch=37)
    for side in ("kept", "rejected"):
        assert other[f"summary_{side}"].pop("mean") == pytest.approx(h[f"summary_{side}"].pop("mean"), rel=1e-12)
    assert other == h


def test_file_batches_stay_small_in_one_large_row_group(tmp_path):
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefghij "), 2000)) for _ in range(3000)]  # about 6 MB of text
    pq.write_table(pa.table({"text": texts, "n": np.arange(3000)}), tmp_path / "p.parquet")
    assert pq.ParquetFile(tmp_path / "p.parquet").metadata.num_row_groups == 1
    batches = list(file_batches(str(tmp_path / "p.parquet"), ["text", "missing"]))
    assert len(batches) > 3 and max(b.nbytes for b in batches) < 2 << 20
    assert sum(b.num_rows for b in batches) == 3000 and batches[0].column_names == ["text", "missing"]
    assert tally(tmp_path)["chars"] == 3000 * 2000


def test_parse_thresholds():
    assert parse_thresholds(None) == DEFAULT_THRESHOLDS
    t = parse_thresholds("toxic=0, ppl=3000,ppl.zh=2500")
    assert t["toxic"] == 0 and t["ppl"] == 3000 and t["ppl.zh"] == 2500 and t["ad"] == DEFAULT_THRESHOLDS["ad"]
    for bad in ("toxic", "spam=1", "toxic=high", "ad.zh=1"):
        with pytest.raises(KilnError, match="--thresholds"):
            parse_thresholds(bad)


def test_binomial_upper_bound():
    # No failures in n: the bound is 1 - alpha**(1/n); 2,995 documents show a rate below 1/1000.
    assert binomial_upper_bound(0, 100) == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    assert docs_needed() == 2995
    assert binomial_upper_bound(0, 2995) <= 0.001 < binomial_upper_bound(0, 2994)
    k, n = 5, 1000
    bound = binomial_upper_bound(k, n)
    cdf = sum(math.comb(n, i) * bound**i * (1 - bound) ** (n - i) for i in range(k + 1))
    assert cdf == pytest.approx(0.05, abs=1e-6)
    assert binomial_upper_bound(3, 3) == 1.0


def test_take_rows_reads_positions_across_files_and_row_groups(tmp_path):
    for i, start in enumerate((0, 7, 20)):
        ids = [f"d{j}" for j in range(start, start + (7 if i == 0 else 13))]
        columns = {"id": ids, "x": list(range(start, start + len(ids)))}
        if i == 1:
            columns.pop("x")  # a file without the column: nulls
        pq.write_table(pa.table(columns), tmp_path / f"part-{i}.parquet", row_group_size=3)
    files = storage.parquet_files(tmp_path)
    table = take_rows(files, [25, 0, 8, 6, 7, 32], ["id", "x"])
    assert table.column("id").to_pylist() == ["d0", "d6", "d7", "d8", "d25", "d32"]
    assert table.column("x").to_pylist() == [0, 6, None, None, 25, 32]


def test_tally_counts_characters_from_stat_chars_or_text(tmp_path):
    texts = ["中文文本", "english text", "x"]
    pq.write_table(pa.table({"text": texts, "lang": ["zh", "en", None], "source": ["a", "b", "b"],
                             "stat.chars": pa.array([4, 12, 1], pa.int64())}), tmp_path / "a.parquet")
    # stat.chars with a null: the text's length is used instead.
    pq.write_table(pa.table({"text": texts, "lang": ["zh", "en", "en"], "source": ["a", "a", "a"],
                             "stat.chars": pa.array([999, None, 1], pa.int64())}), tmp_path / "b.parquet")
    t = tally(tmp_path)
    assert t["docs"] == 6 and t["chars"] == 34
    assert t["lang"] == {"zh": [2, 8], "en": [3, 25], "(unknown)": [1, 1]}
    assert t["source"] == {"a": [4, 21], "b": [2, 13]}


def test_rejected_examples_read_few_row_groups(tmp_path):
    from pipeline.report import _rejected_examples

    n = 60
    reasons = ["a", "b", "c"] * (n // 3)
    table = pa.table({"id": [f"d{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)],
                      "reject_op": ["rule"] * n, "reject_reason": reasons, "reject_detail": [None] * n})
    (tmp_path / "rejected").mkdir()
    pq.write_table(table, tmp_path / "rejected" / "p.parquet", row_group_size=6)
    examples = _rejected_examples(tmp_path, per_reason=2, max_chars=100, seed=3)
    assert sorted(examples) == ["rule/a", "rule/b", "rule/c"]
    picked = [int(d["id"][1:]) for docs in examples.values() for d in docs]
    assert len(picked) == 6 and len({i // 6 for i in picked}) == 1  # one row group of text read
    for label, docs in examples.items():
        assert all(reasons[int(d["id"][1:])] == label.split("/")[1] and d["text"] == f"text {d['id'][1:]}"
                   for d in docs)


def _hand_made_run(run_dir: Path) -> Path:
    """One stage written by hand: markup and CJK in text and source names."""
    stage = run_dir / "01-only"
    texts = ["<script>alert('x')</script> 正文内容很长很长", "plain & simple <b>bold</b> text", "短"]
    table = pa.table({"id": ["a", "b", "c"], "text": texts, "source": ["网页", "网页", "web"], "lang": ["zh", "en", "zh"],
                      "stat.score": [0.5, 0.7, 0.1]})
    storage.write_parquet_atomic(table.slice(0, 2), stage / "data" / "p.parquet")
    rejected = table.slice(2).append_column("reject_op", pa.array(["len"])).append_column(
        "reject_reason", pa.array(["too_short"])).append_column("reject_detail", pa.array([None], pa.string()))
    storage.write_parquet_atomic(rejected, stage / "rejected" / "p.parquet")
    stats = {"name": "only", "folder": "01-only", "docs_in": 3, "docs_out": 2, "rejected_total": 1,
             "rejected": {"len/too_short": 1},
             "ops": [{"label": "len", "op": "len", "kind": "filter", "docs_in": 3, "docs_out": 2, "rejected": 1,
                      "reasons": {"too_short": 1}}], "extra": {"len": {"note": "<i>hi</i>", "n": 3}}}
    storage.write_json(run_dir / "stats.json", {"run": "hand<made>", "stages": [stats]})
    return run_dir


def test_hand_made_run_escapes_text_and_names(tmp_path):
    result = write_report(_hand_made_run(tmp_path / "run"))
    page = result.html.read_text()
    assert "<script" not in page and "<b>bold" not in page and "<i>hi" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "kiln report: hand&lt;made&gt;" in page
    assert "网页" in page
    model = result.model
    assert [m["value"] for m in model["mix"]["after"]["source"]] == ["网页"]
    assert model["evaluation"]["verdict"] == "not evaluated"
    assert model["funnel"]["steps"][0]["reasons"][0]["chars"] == 1


def test_errors_name_the_problem(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "stats.json is missing" in capsys.readouterr().err
    (tmp_path / "stats.json").write_text("{broken")
    assert main(["report", str(tmp_path)]) == 2
    assert "invalid JSON" in capsys.readouterr().err
    _hand_made_run(tmp_path / "run")
    assert main(["report", str(tmp_path / "run"), "--thresholds", "toxic=lots"]) == 2
    assert "--thresholds" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "run"), "--hist-sample", "0"]) == 2
    assert "--hist-sample must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path / "run"), "--sample", "5"])


# --------------------------------------------------------------------------- real runs



@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, shared_data, ray_local):
    return report_runs.pipeline_run(tmp_path_factory.getbasetemp(), shared_data)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, shared_data, pipeline_run):
    return report_runs.full_run(tmp_path_factory.getbasetemp(), shared_data)


def _text_chars(folder: Path) -> int:
    table = storage.read_table(folder, ["text"])
    return int(pc.sum(pc.utf8_length(table.column("text"))).as_py() or 0)


def _strict_json(path: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}, which strict JSON readers reject")

    return json.loads(path.read_text(), parse_constant=refuse)


def _check_page(path: Path) -> str:
    _strict_json(path.parent / "report.json")
    page = path.read_text()
    for section in SECTION_IDS:
        assert f'<section id="{section}"' in page
    assert "<script" not in page.replace("&lt;script", "")
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load anything from outside"
    assert page.count('<img class="plot"') >= 3
    return page


@pytest.mark.ray
def test_pipeline_run_report_matches_the_run(pipeline_run):
    run = storage.read_json(pipeline_run / "stats.json")
    model = write_report(pipeline_run).model
    funnel = model["funnel"]
    assert funnel["docs_in"] == run["stages"][0]["docs_in"] == 450
    assert funnel["docs_out"] == run["stages"][-1]["docs_out"]
    for st, row in zip(run["stages"], funnel["stages"]):
        folder = pipeline_run / st["folder"]
        assert row["docs_in"] == st["docs_in"] and row["docs_out"] == st["docs_out"]
        assert row["chars_kept"] == _text_chars(folder / "data")
        assert row["chars_rejected"] == _text_chars(folder / "rejected")
    # Every rejection reason of the run appears with its count and the characters of its documents.
    steps = {(s["stage"], s["label"]): s for s in funnel["steps"]}
    for st in run["stages"]:
        rejected = storage.read_table(pipeline_run / st["folder"] / "rejected", ["reject_op", "reject_reason", "text"])
        for key, n in st["rejected"].items():
            op, reason = key.split("/", 1)
            entry = next(r for r in steps[(st["folder"], op)]["reasons"] if r["reason"] == reason)
            mask = pc.and_(pc.equal(rejected.column("reject_op"), op), pc.equal(rejected.column("reject_reason"), reason))
            assert entry["docs"] == n == int(pc.sum(mask).as_py())
            assert entry["chars"] == int(pc.sum(pc.utf8_length(rejected.filter(mask).column("text"))).as_py())
    # Mix before = stage 1 input, after = last stage kept.
    assert model["mix"]["before"]["docs"] == 450
    assert {r["value"]: r["docs"] for r in model["mix"]["before"]["lang"]} == {"zh": 300, "en": 150}
    assert model["mix"]["after"]["docs"] == run["stages"][-1]["docs_out"]
    # Each stat column is drawn once, in the stage where it first appears, kept and rejected.
    hists = {h["column"]: h for h in model["statistics"]}
    assert set(hists) == {"stat.chars", "stat.chars_removed"}
    first = run["stages"][0]
    assert hists["stat.chars"]["stage"] == first["folder"]
    assert hists["stat.chars"]["count_kept"] == sum(hists["stat.chars"]["kept"]) == first["docs_out"]
    assert hists["stat.chars"]["count_rejected"] == first["rejected_total"]
    assert hists["stat.chars"]["summary_rejected"]["max"] < 60 <= hists["stat.chars"]["summary_kept"]["min"]
    # Sections without data say so; the evaluation names what was not measured.
    assert set(model["notes"]) == {"dedup", "perplexity", "buckets", "shards"}
    ev = model["evaluation"]
    assert ev["verdict"] == "not evaluated"
    assert [c["criterion"] for c in ev["not_measured"]] == ["privacy", "toxic", "ad", "html", "ppl"]
    assert ev["sample"] == run["stages"][-1]["docs_out"]  # fewer than --sample-min: all of them
    assert len(ev["random_examples"]) == 5 and all(d["text"] for d in ev["random_examples"])
    examples = model["stages"][0]["rejected_examples"]["length_filter/too_short"]
    assert len(examples) == 2 and all(len(d["text"]) < 60 for d in examples)
    page = _check_page(pipeline_run / "report" / "index.html")
    assert "Not in this run (4)" in page
    assert _strict_json(pipeline_run / "report" / "report.json")["funnel"] == funnel


@pytest.mark.ray
def test_full_run_draws_dedup_perplexity_buckets_shards(full_run):
    run = storage.read_json(full_run / "stats.json")
    score = run["stages"][-1]
    model = write_report(full_run).model
    assert model["notes"] == {}
    dedup = model["dedup"][0]
    assert dedup["docs_removed"] == score["extra"]["dedup"]["docs_removed"] == score["rejected"]["dedup/duplicate"] > 0
    assert dedup["cluster_sizes"] == [{"size": 2, "clusters": dedup["clusters"]}]

    ppl = model["perplexity"]
    assert ppl["stage"] == score["folder"] and ppl["column"] == "stat.ppl"
    data = storage.read_table(full_run / score["folder"] / "data", ["lang", "stat.ppl"])
    for h in ppl["per_lang"]:
        assert set(h["cutoffs"]) == {"keep_below", "head_below"}
        assert h["cutoffs"] == score["extra"]["perplexity"]["cutoffs"][h["lang"]]
        kept = data.filter(pc.equal(data.column("lang"), h["lang"])).column("stat.ppl").to_numpy()
        assert sum(h["kept"]) == len(kept) and h["summary_kept"]["max"] <= h["cutoffs"]["keep_below"]
    assert {h["lang"] for h in ppl["per_lang"]} == {"zh", "en"}

    manifest = json.loads((full_run / "shards" / "manifest.json").read_text())
    buckets = model["buckets"][0]["buckets"]
    assert [b["tokens"] for b in buckets] == [manifest["tokens_by_bucket"].get(str(b["bucket"])) for b in buckets]
    assert sum(b["docs"] for b in buckets) == score["docs_out"]
    shards = model["shards"]
    assert shards["total_tokens"] == sum(s["tokens"] for s in manifest["shards"]) == model["overview"]["tokens"]
    assert shards["shards"] == len(manifest["shards"]) and not shards["missing_files"]
    assert {h["column"] for h in model["statistics"] if h["stage"] == score["folder"]} == {*RATE_COLUMNS, "stat.ppl"}

    # The evaluation: every final document is sampled here (fewer than --sample-min), so the
    # unqualified count can be recomputed from the data.
    ev = model["evaluation"]
    final = storage.read_table(full_run / score["folder"] / "data", RATE_COLUMNS)
    over = np.zeros(final.num_rows, bool)
    for column in RATE_COLUMNS:
        over |= final.column(column).to_numpy() > DEFAULT_THRESHOLDS[column.split("_")[-1]]
    assert ev["sample"] == final.num_rows
    assert ev["unqualified"] == int(over.sum()) > 0
    assert ev["verdict"] == "fail"
    assert [c["criterion"] for c in ev["criteria"]] == ["privacy", "toxic", "ad", "html", "ppl"]
    assert not ev["not_measured"]
    ppl_entry = ev["criteria"][-1]
    assert not ppl_entry["judged"] and ppl_entry["over"] == 0
    toxic = ev["criteria"][1]
    values = [d["value"] for d in toxic["examples"]]
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(toxic["max"])
    assert all(d["failed"] for d in ev["unqualified_examples"])
    _check_page(full_run / "report" / "index.html")


@pytest.mark.ray
def test_thresholds_and_sample_options(full_run, tmp_path):
    lenient = EvalOptions(thresholds=parse_thresholds("privacy=1e9,toxic=1e9,ad=1e9,html=1e9"))
    ev = build_report(full_run, ReportOptions(evaluation=lenient))["evaluation"]
    assert ev["verdict"] == "pass" and ev["unqualified"] == 0
    assert "sample is small" in ev["verdict_note"]  # 244 documents cannot show < 1/1000
    # Judging perplexity per language: a cut below the median of zh fails about half of zh.
    zh_median = next(h for h in build_report(full_run)["perplexity"]["per_lang"] if h["lang"] == "zh")
    strict = EvalOptions(thresholds=parse_thresholds(
        f"privacy=1e9,toxic=1e9,ad=1e9,html=1e9,ppl.zh={zh_median['summary_kept']['p50']}"))
    ev = build_report(full_run, ReportOptions(evaluation=strict))["evaluation"]
    assert ev["verdict"] == "fail"
    assert ev["unqualified"] == pytest.approx(zh_median["count_kept"] / 2, abs=1)
    assert all(d["lang"] == "zh" and d["failed"] == ["ppl"] for d in ev["unqualified_examples"])
    # A fraction above the minimum: ceil(fraction * N) documents, the same ones for one seed.
    half = [build_report(full_run, ReportOptions(evaluation=EvalOptions(fraction=0.5, min_docs=10, seed=s)))
            ["evaluation"] for s in (7, 7, 8)]
    population = half[0]["population"]
    assert half[0]["sample"] == math.ceil(population / 2)
    ids = [[d["id"] for d in h["random_examples"]] for h in half]
    assert ids[0] == ids[1] != ids[2]
    capped = build_report(full_run, ReportOptions(evaluation=EvalOptions(fraction=1.0, min_docs=0, max_docs=50)))
    assert capped["evaluation"]["sample"] == 50


@pytest.mark.ray
def test_tiny_histogram_sample_keeps_counts_and_totals_and_says_so(full_run, tmp_path):
    """A multi-stage run reported with a sample of 20 values per histogram side: every count
    and total is the same as with all values, and the page says which figures are sampled."""
    run = storage.read_json(full_run / "stats.json")
    exact = write_report(full_run, ReportOptions(out_dir=str(tmp_path / "exact"))).model
    result = write_report(full_run, ReportOptions(out_dir=str(tmp_path / "small"), hist_sample=20))
    small = result.model
    for key in ("overview", "funnel", "mix", "dedup", "buckets", "shards", "evaluation"):
        assert small[key] == exact[key], key
    assert [s["rejected_examples"] for s in small["stages"]] == [s["rejected_examples"] for s in exact["stages"]]
    assert len(run["stages"]) >= 3 and len({h["stage"] for h in small["statistics"]}) >= 2
    for h, e in zip(small["statistics"], exact["statistics"]):
        assert (h["stage"], h["column"]) == (e["stage"], e["column"])
        assert "sample" not in e
        assert (h["count_kept"], h["count_rejected"]) == (e["count_kept"], e["count_rejected"])
        assert (sum(h["kept"]), sum(h["rejected"])) == (h["count_kept"], h["count_rejected"])
        for side in ("kept", "rejected"):
            if f"summary_{side}" in e:
                for stat in ("min", "max"):
                    assert h[f"summary_{side}"][stat] == e[f"summary_{side}"][stat]
                assert h[f"summary_{side}"]["mean"] == pytest.approx(e[f"summary_{side}"]["mean"], rel=1e-9)
        if max(h["count_kept"], h["count_rejected"]) > 20:
            assert h["sample"] == {"kept": min(20, h["count_kept"]), "rejected": min(20, h["count_rejected"])}
        else:
            assert h == e
    # Every bin counted exactly: the chars histogram of the first stage against its data.
    first = run["stages"][0]["folder"]
    chars = next(h for h in small["statistics"] if h["column"] == "stat.chars" and h["stage"] == first)
    values = storage.read_table(full_run / first / "data", ["stat.chars"]).column("stat.chars").to_numpy()
    edges = np.array(chars["edges"])
    assert chars["kept"] == np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)[0].tolist()
    for h, e in zip(small["perplexity"]["per_lang"], exact["perplexity"]["per_lang"]):
        assert h["lang"] == e["lang"] and h["count_kept"] == e["count_kept"] > 20 and "sample" in h
        assert (sum(h["kept"]), sum(h["rejected"])) == (e["count_kept"], e["count_rejected"])
    page = result.html.read_text()
    assert page.count("</code> †") == len([h for h in small["statistics"] if "sample" in h]) > 0
    assert page.count("uniform random sample (seeded) of up to 20 values") == 2  # statistics, perplexity
    assert "uniform random sample" not in (tmp_path / "exact" / "index.html").read_text()


@pytest.mark.ray
def test_report_is_idempotent(full_run, tmp_path):
    first = write_report(full_run, ReportOptions(out_dir=str(tmp_path / "a")))
    second = write_report(full_run, ReportOptions(out_dir=str(tmp_path / "b")))
    assert first.html.read_bytes() == second.html.read_bytes()
    assert first.json.read_bytes() == second.json.read_bytes()


@pytest.mark.ray
def test_cli_prints_a_summary(full_run, capsys):
    assert main(["report", str(full_run), "--thresholds", "privacy=1e9,toxic=1e9,ad=1e9,html=1e9"]) == 0
    out = capsys.readouterr().out
    assert "03-score" in out and "perplexity/ppl_above_cutoff" in out
    assert "pass" in out and str(full_run / "report" / "index.html") in out
    assert "shards: " in out


@pytest.mark.ray
def test_analyze_run_reports_would_reject(tmp_path, shared_data, ray_local):
    inputs = report_runs.make_inputs(shared_data, tmp_path / "in", zh_news=60, zh_reviews=60, en=30)
    analyze_dir = report_runs.run_pipeline_dict(report_runs.pipeline_dict(inputs, tmp_path / "run"), analyze=True)
    run = storage.read_json(analyze_dir / "stats.json")
    model = write_report(analyze_dir).model
    assert model["run"]["analyze"] and model["funnel"]["analyze"]
    first = run["stages"][0]
    assert first["docs_out"] == first["docs_in"]  # nothing dropped
    step = next(s for s in model["funnel"]["steps"] if s["stage"] == first["folder"] and s["label"] == "length_filter")
    would = first["would_reject"]["length_filter/too_short"]
    assert step["dropped"] == would > 0 and step["reasons"][0]["chars"] > 0
    chars = next(h for h in model["statistics"] if h["column"] == "stat.chars")
    assert chars["count_rejected"] == would and chars["count_kept"] == first["docs_in"] - would
    page = (analyze_dir / "report" / "index.html").read_text()
    assert "Analyze run" in page and "would be rejected" in page


@pytest.mark.ray
def test_missing_stage_folder_is_a_note_not_a_crash(pipeline_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pipeline_run, copy, symlinks=True, ignore=shutil.ignore_patterns("report"))
    run = storage.read_json(copy / "stats.json")
    shutil.rmtree(copy / run["stages"][-1]["folder"])
    model = write_report(copy).model
    assert "no data/ folder" in model["stages"][-1]["missing"]
    assert model["funnel"]["docs_out"] == run["stages"][-1]["docs_out"]  # from stats.json
    assert "after" not in model["mix"] and model["evaluation"] is None
    assert "evaluation" in model["notes"]


def test_plot_labels_keep_punctuation_and_escape_cjk_only_without_a_cjk_font(monkeypatch):
    from pipeline.report import html as report_html

    monkeypatch.setattr(report_html, "_cjk_font", None)  # looked up: none installed
    assert report_html.plot_label("01-normalize · read") == "01-normalize · read"
    assert report_html.plot_label("stat.ppl · zh 中文") == "stat.ppl · zh \\u4e2d\\u6587"
    monkeypatch.setattr(report_html, "_cjk_font", "WenQuanYi Micro Hei")
    assert report_html.plot_label("stat.ppl · zh 中文") == "stat.ppl · zh 中文"
