"""Perplexity selection and difficulty buckets: exact cut-offs and boundaries on known
distributions, Colossal proportionality, and the global operators run through the runner
(on `stat.chars`, a statistic whose distribution the test controls exactly)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from operators.bucketing import (
    HEAD,
    MIDDLE,
    TAIL,
    DifficultyBucketParams,
    PerplexitySelectParams,
    boundaries_at,
    count_boundaries,
    equal_split_ranks,
    proportional_bin_sizes,
    rank_count,
    ranks_from_sizes,
    select_boundaries,
    select_labels,
    tie_keys,
)

# --------------------------------------------------------------------------- kernels


def shuffled(values, seed=0):
    values = list(values)
    random.Random(seed).shuffle(values)
    return np.asarray(values, dtype=float)


def ids(n):
    return tie_keys([f"doc{i}" for i in range(n)])


def test_rank_count_rounds_half_up():
    assert [rank_count(0.6, n) for n in (0, 1, 2, 3, 4, 5, 10, 100)] == [0, 1, 1, 2, 2, 3, 6, 60]
    assert rank_count(0.0, 10) == 0 and rank_count(1.0, 7) == 7


def test_select_on_one_to_hundred_is_exact():
    values = shuffled(range(1, 101))
    ties = ids(100)
    b = select_boundaries(values, ties, keep_fraction=0.6, head_fraction=0.3)
    assert b["head"][0] == 31.0 and b["keep"][0] == 61.0  # first value past each cut
    labels = select_labels(values, ties, b["head"], b["keep"])
    assert sorted(values[labels == HEAD]) == list(range(1, 31))
    assert sorted(values[labels == MIDDLE]) == list(range(31, 61))
    assert sorted(values[labels == TAIL]) == list(range(61, 101))


def test_select_with_ties_keeps_exactly_the_planned_count_deterministically():
    values = np.array([5.0] * 10 + [1.0] * 3)
    ties = ids(13)
    b = select_boundaries(values, ties, 0.6, 0.3)  # keep 8 of 13, head 4
    labels = select_labels(values, ties, b["head"], b["keep"])
    assert (labels != TAIL).sum() == 8 and (labels == HEAD).sum() == 4
    assert (labels[10:] == HEAD).all()  # the three lowest values are head
    again = select_labels(values[::-1], ties[::-1], b["head"], b["keep"])[::-1]
    assert (again == labels).all()  # labels depend on (value, id), not on row order


def test_select_all_and_none():
    values, ties = shuffled(range(10)), ids(10)
    b = select_boundaries(values, ties, 1.0, 1.0)
    assert b == {"head": None, "keep": None}
    assert (select_labels(values, ties, None, None) == HEAD).all()
    b = select_boundaries(values[:1], ties[:1], 0.4, 0.0)  # 0.4 of one document rounds to none
    assert select_labels(values[:1], ties[:1], b["head"], b["keep"]).tolist() == [TAIL]


def test_quantile_buckets_on_known_distributions():
    values, ties = shuffled(range(100)), ids(100)
    bounds = boundaries_at(values, ties, equal_split_ranks(100, 4))
    assert [b[0] for b in bounds] == [25.0, 50.0, 75.0]
    buckets = count_boundaries(values, ties, bounds)
    for k in range(4):
        assert sorted(values[buckets == k]) == list(range(25 * k, 25 * k + 25))
    # 10 documents in 3 buckets: 3, 3, 4 (bucket j starts at rank floor(j*n/K)).
    values, ties = shuffled(range(10)), ids(10)
    buckets = count_boundaries(values, ties, boundaries_at(values, ties, equal_split_ranks(10, 3)))
    assert np.bincount(buckets).tolist() == [3, 3, 4]
    assert buckets[np.argsort(values)].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


def test_equal_values_are_split_evenly_by_id():
    values, ties = np.zeros(9), ids(9)
    buckets = count_boundaries(values, ties, boundaries_at(values, ties, equal_split_ranks(9, 3)))
    assert np.bincount(buckets).tolist() == [3, 3, 3]


def test_fewer_documents_than_buckets():
    values, ties = np.array([2.0, 1.0]), ids(2)
    bounds = boundaries_at(values, ties, equal_split_ranks(2, 5))  # ranks 0, 0, 1, 1
    assert bounds[0] is not None and bounds[-1] is not None
    assert sorted(count_boundaries(values, ties, bounds).tolist()) == [2, 4]
    assert boundaries_at(values, ties, [5]) == [None]  # a rank past the end: nobody reaches it


def assert_proportional(counts, k):
    sizes = proportional_bin_sizes(counts, k)
    counts = np.asarray(counts)
    total = counts.sum()
    assert (sizes >= 0).all() and (sizes.sum(axis=1) == counts).all()
    if total:
        buckets = sizes.sum(axis=0)
        assert buckets.max() - buckets.min() <= 1
        assert (np.abs(sizes - np.outer(counts, buckets) / total) < 1).all()
    return sizes


def test_colossal_bins_are_within_one_document_of_proportional():
    assert assert_proportional([30, 30, 30], 3).tolist() == [[10, 10, 10]] * 3
    # Many one-document sources beside a big one: naive per-source rounding would put every
    # singleton in bucket 0 and starve the big source's share there.
    sizes = assert_proportional([300] + [1] * 100, 3)
    assert sizes[1:].sum(axis=0).max() - sizes[1:].sum(axis=0).min() <= 1
    # A case the greedy pass cannot finish, needing augmenting paths.
    assert_proportional([2, 9, 11, 0, 4, 7], 5)
    rng = np.random.default_rng(0)
    for _ in range(500):
        assert_proportional(rng.integers(0, 40, size=int(rng.integers(1, 12))), int(rng.integers(2, 8)))


def test_colossal_bins_follow_difficulty_within_each_source():
    sizes = proportional_bin_sizes([7, 13], 3)
    for n, row in zip([7, 13], sizes):
        values, ties = shuffled(range(n), seed=n), ids(n)
        buckets = count_boundaries(values, ties, boundaries_at(values, ties, ranks_from_sizes(row)))
        assert np.bincount(buckets, minlength=3).tolist() == row.tolist()
        assert (np.diff(buckets[np.argsort(values)]) >= 0).all()  # easier never after harder


def test_params_are_checked():
    with pytest.raises(ValueError, match="head_fraction"):
        PerplexitySelectParams(keep_fraction=0.5, head_fraction=0.6)
    with pytest.raises(ValueError, match="keep_fraction"):
        PerplexitySelectParams(keep_fraction=0)
    with pytest.raises(ValueError, match="names has 2 entries"):
        DifficultyBucketParams(num_buckets=3, names=["a", "b"])
    assert DifficultyBucketParams().bucket_names() == ["easy", "medium", "hard"]
    assert DifficultyBucketParams(mode="colossal", normalize_by=["lang"]).group_keys() == ["source", "lang"]


# --------------------------------------------------------------------------- through the runner


def write_docs(path: Path, lengths: list[int], char: str) -> Path:
    path.write_text("".join(char * n + "\n" for n in lengths), encoding="utf-8")
    return path


def read_rows(folder: Path) -> list[dict]:
    return [row for f in sorted(folder.glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


@pytest.fixture
def two_languages(tmp_path):
    rng = random.Random(0)
    zh, en = list(range(1, 51)), list(range(1, 21))
    rng.shuffle(zh)
    rng.shuffle(en)
    return [{"path": str(write_docs(tmp_path / "zh.txt", zh, "字")), "lang": "zh", "source": "zhweb"},
            {"path": str(write_docs(tmp_path / "en.txt", en, "a")), "lang": "en", "source": "enweb"}]


@pytest.mark.ray
def test_select_cuts_per_language_and_buckets_survivors(run_config, two_languages, engine):
    stats, run_dir = run_config({
        "inputs": two_languages,
        "stages": [{"name": "select", "ops": [{"length_filter": {}},
                                              {"perplexity_select": {"column": "stat.chars"}},
                                              {"difficulty_bucket": {"column": "stat.chars", "num_buckets": 3}}]}]},
        engine=engine)
    (select,) = stats["stages"]
    assert (select["docs_in"], select["docs_out"]) == (70, 42)  # 30 of 50 zh, 12 of 20 en
    assert select["rejected"] == {"perplexity_select/perplexity": 28}
    extra = select["extra"]["perplexity_select"]
    assert extra["column"] == "stat.chars"
    assert extra["cutoffs"]["zh"] == {"keep_below": 30.0, "head_below": 15.0}
    assert extra["counts"]["zh"] == {"docs": 50, "head": 15, "middle": 15, "tail": 20}
    assert extra["cutoffs"]["en"]["keep_below"] == 12.0 and extra["cutoffs"]["en"]["head_below"] == 6.0
    assert sum(extra["histograms"]["zh"]["counts"]) == 50
    rejected = read_rows(run_dir / "01-select" / "rejected")
    assert sorted((r["lang"], r["stat.chars"]) for r in rejected) == sorted(
        [("zh", n) for n in range(31, 51)] + [("en", n) for n in range(13, 21)])
    assert all(r["reject_op"] == "perplexity_select" for r in rejected)
    kept = read_rows(run_dir / "01-select" / "data")
    for r in kept:
        limit = 15 if r["lang"] == "zh" else 6
        assert r["stat.ppl_label"] == ("head" if r["stat.chars"] <= limit else "middle")
    # The 42 survivors in 3 global buckets of 14; bucket stats in documents and characters.
    buckets = select["extra"]["difficulty_bucket"]["buckets"]
    assert [b["docs"] for b in buckets] == [14, 14, 14]
    assert [b["name"] for b in buckets] == ["easy", "medium", "hard"]
    for b in buckets:
        members = [r for r in kept if r["bucket"] == b["bucket"]]
        assert b["chars"] == sum(len(r["text"]) for r in members)
        assert (b["low"], b["high"]) == (min(r["stat.chars"] for r in members), max(r["stat.chars"] for r in members))
    lows = [b["low"] for b in buckets]
    highs = [b["high"] for b in buckets]
    assert highs[0] <= lows[1] and highs[1] <= lows[2]
    assert select["extra"]["difficulty_bucket"]["curriculum"] == [0, 1, 2]
    curriculum = json.loads((run_dir / "01-select" / "curriculum.json").read_text())
    assert curriculum["names"] == ["easy", "medium", "hard"] and curriculum["bucket_column"] == "bucket"


@pytest.mark.ray
def test_analyze_mode_marks_the_tail_and_keeps_everything(run_config, two_languages, engine):
    stats, run_dir = run_config({
        "inputs": two_languages,
        "stages": [{"name": "select", "ops": [{"length_filter": {}},
                                              {"perplexity_select": {"column": "stat.chars", "group_by": []}}]}]},
        analyze=True, engine=engine)
    (select,) = stats["stages"]
    assert select["docs_out"] == 70 and select["rejected_total"] == 0
    assert select["would_reject"] == {"perplexity_select/perplexity": 28}  # 0.4 of 70, one group
    rows = read_rows(run_dir / "analyze" / "01-select" / "data")
    tail = [r for r in rows if r["stat.ppl_label"] == "tail"]
    assert len(tail) == 28 and all(r["would_reject"] == "perplexity_select/perplexity" for r in tail)


@pytest.mark.ray
def test_colossal_and_normalized_buckets(run_config, tmp_path, engine):
    """Three sources of different sizes and difficulty scales: in Colossal mode every
    bucket holds each source in proportion (within one document); with normalize_by source
    each source is split by its own quantiles."""
    rng = random.Random(5)
    inputs = []
    for name, n, scale in (("books", 7, 1), ("news", 13, 3), ("web", 50, 7)):
        lengths = [scale * (i + 1) for i in range(n)]
        rng.shuffle(lengths)
        inputs.append({"path": str(write_docs(tmp_path / f"{name}.txt", lengths, "x")), "source": name})
    stats, run_dir = run_config({
        "inputs": inputs,
        "stages": [{"name": "buckets", "ops": [
            {"length_filter": {}},
            {"difficulty_bucket": {"column": "stat.chars", "mode": "colossal", "num_buckets": 4}},
            {"difficulty_bucket": {"column": "stat.chars", "normalize_by": ["source"], "num_buckets": 2,
                                   "bucket_column": "half", "names": ["short", "long"]}}]}]}, engine=engine)
    (stage,) = stats["stages"]
    buckets = stage["extra"]["difficulty_bucket"]["buckets"]
    sizes = {"books": 7, "news": 13, "web": 50}
    assert sorted(b["docs"] for b in buckets) == [17, 17, 18, 18]
    for b in buckets:
        for source, n in sizes.items():
            assert abs(b["sources"][source] - n * b["docs"] / 70) < 1
    rows = read_rows(run_dir / "01-buckets" / "data")
    assert len(rows) == 70 and all(r["bucket"] is not None and r["half"] is not None for r in rows)
    for source, n in sizes.items():
        mine = sorted((r["stat.chars"], r["bucket"], r["half"]) for r in rows if r["source"] == source)
        assert [b for _, b, _ in mine] == sorted(b for _, b, _ in mine)  # easy to hard within a source
        assert [h for _, _, h in mine] == [0] * (n // 2) + [1] * (n - n // 2)
    normalized = stage["extra"]["difficulty_bucket#2"]
    assert normalized["boundaries"] == {"books": [4.0], "news": [21.0], "web": [182.0]}
    assert [b["name"] for b in normalized["buckets"]] == ["short", "long"]


@pytest.mark.ray
def test_a_missing_statistic_is_a_one_line_error(run_config, two_languages):
    from common.errors import KilnError

    with pytest.raises(KilnError, match=r"no column stat\.ppl.*perplexity operator"):
        run_config({"inputs": two_languages, "stages": [{"name": "s", "ops": [{"perplexity_select": {}}]}]})


@pytest.mark.ray
def test_gathered_and_distributed_summaries_agree(run_config, two_languages):
    # The default budget orders the projection in one task; a one-byte budget makes Ray Data
    # group it across the cluster. The same cut-offs, buckets and rows either way.
    outcomes = {}
    for budget in ("2GB", 1):
        stats, run_dir = run_config({
            "inputs": two_languages, "ray": {"global_memory": budget},
            "stages": [{"name": "select", "ops": [
                {"length_filter": {}}, {"perplexity_select": {"column": "stat.chars"}},
                {"difficulty_bucket": {"column": "stat.chars", "mode": "colossal", "num_buckets": 3}}]}]}, redo=True)
        extra = stats["stages"][0]["extra"]
        assert {extra[op]["execution"] for op in ("perplexity_select", "difficulty_bucket")} == {
            "gathered" if budget == "2GB" else "distributed"}
        rows = read_rows(run_dir / "01-select" / "data") + read_rows(run_dir / "01-select" / "rejected")
        outcomes[budget] = (
            sorted((r["id"], r.get("reject_op"), r.get("stat.ppl_label"), r.get("bucket")) for r in rows),
            {op: {k: v for k, v in extra[op].items() if k not in ("execution", "wall_seconds")}
             for op in ("perplexity_select", "difficulty_bucket")})
    assert outcomes["2GB"] == outcomes[1]
    assert len(outcomes[1][0]) == 70
