"""Deduplication: signatures equal to datasketch's, LSH parameters as datasketch picks them,
normalization, survivor order, the block kernels of the distributed steps (connected
components checked against scipy on random graphs, split over several partitions as the
shuffles split them), and end-to-end runs on real text: known clusters found, chains merged,
distinct documents kept apart, identical reruns, an earlier corpus, full accounting."""

from __future__ import annotations

import csv
import glob
import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import dedup as kernels
from operators.dedup import ExactDedupParams, MinHashParams, UrlDedupParams
from pipeline.global_ops import dedup as executors

datasketch = pytest.importorskip("datasketch")


# --------------------------------------------------------------------------- real text


def _bbc(shared_data, n=40):
    files = sorted(glob.glob(str(shared_data / "en_bbc_news" / "bbc" / "*" / "*.txt")))
    return [Path(f).read_text(encoding="latin-1") for f in files[:: max(1, len(files) // n)][:n]]


def _clue(shared_data, n=40):
    path = shared_data / "zh_uer_corpora" / "corpora" / "CLUECorpusSmall_sampled.txt"
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if len(line.strip()) > 200]
    return lines[:n]


# --------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
def test_signatures_equal_datasketch_on_real_text(shared_data, scheme):
    texts = _bbc(shared_data, 25) + _clue(shared_data, 25) + ["short one", "", "。，！", "Hello, World"]
    params = MinHashParams(scheme=scheme, num_perm=64, seed=7)
    sigs, per_doc = kernels.signatures(pa.array(texts), None, params)
    for i, text in enumerate(texts):
        shingles = kernels.shingles(text, params)
        assert len(shingles) == per_doc[i]
        reference = datasketch.MinHash(num_perm=64, seed=7, hashfunc=kernels.shingle_hash, scheme=scheme)
        reference.update_batch(shingles)
        assert np.array_equal(reference.hashvalues.astype(np.uint32), sigs[i]), f"document {i}"
    # Chinese lines get character shingles, English articles word shingles.
    assert all(len(s[0]) == 1 for s in kernels.shingles(texts[30], params)[:3])
    assert any(len(w) > 1 for w in kernels.shingles(texts[0], params)[0])


def test_shingle_normalization_is_configurable_and_matches_datasketch(shared_data):
    two_words = dict(word_ngram=2, shingle="word")
    text = "Ｈｅｌｌｏ, World 2024 again"
    assert kernels.shingles(text, MinHashParams(**two_words))[0] == ("ｈｅｌｌｏ", "world")  # default: no NFKC
    nfkc = MinHashParams(unicode_form="NFKC", **two_words)
    assert kernels.shingles(text, nfkc)[0] == ("hello", "world")
    assert kernels.shingles(text, MinHashParams(punctuation="keep", **two_words))[0] == ("ｈｅｌｌｏ,", "world")
    assert ("world", "again") in kernels.shingles(text, MinHashParams(digits="remove", **two_words))
    assert kernels.shingles("Big Cat", MinHashParams(lowercase=False, **two_words)) == [("Big", "Cat")]
    chars = dict(char_ngram=2, shingle="char")
    assert kernels.shingles("中 文。", MinHashParams(**chars)) == [("中", "文")]
    assert kernels.shingles("中 文。", MinHashParams(whitespace="keep", **chars)) == [("中", " "), (" ", "文")]
    assert kernels.shingles("中 文。", MinHashParams(punctuation="keep", **chars)) == [("中", "文"), ("文", "。")]
    # Non-default options change the index fingerprint; the defaults keep old indexes valid.
    assert "punctuation" not in MinHashParams().index_fingerprint()
    assert MinHashParams(punctuation="keep").index_fingerprint()["punctuation"] == "keep"
    texts = _bbc(shared_data, 4) + _clue(shared_data, 4)
    for params in (MinHashParams(num_perm=32, unicode_form="NFKC", punctuation="keep", whitespace="keep"),
                   MinHashParams(num_perm=32, digits="remove", lowercase=False)):
        sigs, _ = kernels.signatures(pa.array(texts), None, params)
        for i, t in enumerate(texts):
            reference = datasketch.MinHash(num_perm=32, seed=1, hashfunc=kernels.shingle_hash)
            reference.update_batch(kernels.shingles(t, params))
            assert np.array_equal(reference.hashvalues.astype(np.uint32), sigs[i])


def test_language_column_overrides_script_share():
    params = MinHashParams()
    texts = pa.array(["这是一段中文文本，用来测试。", "plain english words here", "plain english words here"])
    langs = pa.array([None, "zh-Hans", "en"])
    assert kernels.uses_char_shingles(texts, langs, params).tolist() == [True, True, False]
    assert kernels.uses_char_shingles(texts, None, MinHashParams(shingle="word")).tolist() == [False] * 3


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_bands_rows_as_datasketch_chooses(threshold):
    lsh = datasketch.MinHashLSH(threshold=threshold, num_perm=128)
    assert kernels.optimal_bands_rows(threshold, 128) == (lsh.b, lsh.r)
    assert MinHashParams(threshold=threshold, verify=False).band_rows == (lsh.b, lsh.r)
    assert MinHashParams(bands=16, rows=8).band_rows == (16, 8)


def test_band_keys_collide_exactly_where_bands_are_equal():
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 2**32, size=(6, 20), dtype=np.uint64).astype(np.uint32)
    sigs[1, 5:10] = sigs[0, 5:10]  # band 1 of 4 (rows 5) equal between documents 0 and 1
    keys = kernels.band_keys(sigs, 4, 5)
    assert keys[0, 1] == keys[1, 1]
    assert (keys[0, [0, 2, 3]] != keys[1, [0, 2, 3]]).all()
    assert len(set(keys[:, 1].tolist())) == 5
    # The same values in different bands do not share a bucket.
    same = np.tile(sigs[:1, :5], (1, 4))
    assert len(set(kernels.band_keys(same, 4, 5)[0].tolist())) == 4


def test_chinese_near_duplicate_with_inserted_characters(shared_data):
    original, other = _clue(shared_data, 2)
    edited = original[:60] + "的" + original[60:120] + "了吧" + original[120:]
    params = MinHashParams()
    sigs, _ = kernels.signatures(pa.array([original, edited, other]), None, params)
    near = kernels.estimated_jaccard(sigs[:1], sigs[1:2])[0]
    far = kernels.estimated_jaccard(sigs[:1], sigs[2:3])[0]
    exact = _exact_jaccard(original, edited, params)
    assert exact > 0.85 and abs(near - exact) < 0.12 and far < 0.1


def _exact_jaccard(a: str, b: str, params: MinHashParams) -> float:
    sa, sb = set(kernels.shingles(a, params)), set(kernels.shingles(b, params))
    return len(sa & sb) / len(sa | sb)


# --------------------------------------------------------------------------- keys and ranks


def test_exact_normalization_folds_case_punctuation_whitespace_and_digits():
    texts = pa.array(["Hello,  World! 2024", "hello world 2024", "HELLO WORLD 2024.", "hello world 1999"])
    normalized = kernels.normalize_for_exact(texts, ExactDedupParams())
    assert normalized[0] == normalized[1] == normalized[2] != normalized[3]
    folded = kernels.normalize_for_exact(texts, ExactDedupParams(digits="zero"))
    assert folded[0] == folded[3]
    strict = kernels.normalize_for_exact(texts, ExactDedupParams(lowercase=False, punctuation="keep"))
    assert len(set(strict.to_pylist())) == 4


_TRICKY = ["Ｈｅｌｌｏ，ｗｏｒｌｄ！１２３", "wait…  what", "e\u0301te\u0301 cafe\u0301", "\u1100\u1161\u11a8 \uac00\u11a8",
           "\ufdfa and \ufb01ne", "\u212a\u00c5 \u0130stanbul \u03a3\u039f\u03a3", "a\u00a0b\u3000c\u2028d\x0be",
           "٣٤ digits ١٢", "  \t\n", "", "(￣▽￣) ´・ω・` ¯\\_(ツ)_/¯", "x\u0334\u0333y", "ﬃ ﬄ ㍿ ㋿ ⑳ Ⅻ"]


@pytest.mark.parametrize("options", [{}, {"digits": "zero"}, {"digits": "remove", "whitespace": "remove"},
                                     {"punctuation": "keep"}, {"whitespace": "keep"},
                                     {"lowercase": False, "unicode_form": "none", "digits": "remove"}])
def test_compiled_exact_normalization_equals_the_arrow_definition(shared_data, options, monkeypatch):
    from operators import exact_keys

    params = ExactDedupParams(**options)
    step = 1 if not options or options.get("unicode_form") == "none" else 7
    every = [chr(c) for c in range(0, 0x110000, step) if not 0xD800 <= c <= 0xDFFF]
    texts = pa.array(_bbc(shared_data, 40) + _clue(shared_data, 200) + _TRICKY + every
                     + [f"A{c}b" for c in every[::3]] + [f"e{c}\u0301 x" for c in every[::5]])
    expected = kernels.normalize_for_exact(texts, params).to_pylist()
    assert exact_keys.normalize(texts, params, compiled=True).to_pylist() == expected
    assert exact_keys.normalize(texts, params, compiled=False).to_pylist() == expected
    high, low = exact_keys.exact_keys(texts.slice(0, 240), params)
    assert (high[0], low[0]) == kernels.hash128(pa.array(expected[:1]))
    # Past the size that pays for the tables: keys of the compiled rows and of the rows left
    # to the definition (the tricky ones), each equal to the definition's hash.
    monkeypatch.setattr(exact_keys, "_bytes_seen", exact_keys._WORTH_TABLES_BYTES)
    high, low = exact_keys.exact_keys(texts, params)
    want_high, want_low = kernels.hash128(pa.array(expected))
    assert np.array_equal(high, want_high) and np.array_equal(low, want_low)


def test_exact_tables_come_back_from_the_machine_cache_equal(tmp_path, monkeypatch):
    from operators import exact_keys

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    options = (True, "NFKC", r"[\p{P}\p{S}\s]")
    exact_keys.tables.cache_clear()
    built = exact_keys.tables(*options)
    cache_file = exact_keys._cache_file(*options)
    assert cache_file.is_file() and cache_file.parent == tmp_path / "kiln"
    exact_keys.tables.cache_clear()
    loaded = exact_keys.tables(*options)
    assert all(np.array_equal(a, b) for a, b in zip(built, loaded))
    cache_file.write_bytes(b"not a table")  # a broken file is rebuilt, not trusted
    exact_keys.tables.cache_clear()
    rebuilt = exact_keys.tables(*options)
    assert all(np.array_equal(a, b) for a, b in zip(built, rebuilt))
    exact_keys.tables.cache_clear()


def test_url_normalization():
    params = UrlDedupParams()
    same = ["https://www.Example.com/a/b/?utm_source=x&b=2&a=1#top", "http://example.com:80/a/b?a=1&b=2",
            "example.com/a/b?b=2&a=1&fbclid=abc"]
    assert len({kernels.normalize_url(u, params) for u in same}) == 1
    assert kernels.normalize_url("http://example.com/a/c", params) != kernels.normalize_url(same[0], params)
    assert kernels.normalize_url("", params) is None and kernels.normalize_url(None, params) is None
    assert kernels.normalize_url("http://[broken", params) is None


def test_rank_keys_order_survivors():
    batch = pa.table({"id": ["web:a.jsonl:10", "web:a.jsonl:9", "web:b.jsonl:1"],
                      "text": ["short", "a longer text", "mid text"], "stat.q": [0.5, None, 0.9]})
    first = kernels.rank_keys(batch, ExactDedupParams()).to_pylist()
    assert sorted(range(3), key=lambda i: first[i]) == [1, 0, 2]  # natural order: 9 before 10
    longest = kernels.rank_keys(batch, ExactDedupParams(keep="longest")).to_pylist()
    assert min(range(3), key=lambda i: longest[i]) == 1
    best = kernels.rank_keys(batch, ExactDedupParams(keep="best", best_column="stat.q")).to_pylist()
    assert sorted(range(3), key=lambda i: best[i]) == [2, 0, 1]  # missing value last
    lowest = kernels.rank_keys(batch, ExactDedupParams(keep="best", best_column="stat.q", best="lowest")).to_pylist()
    assert sorted(range(3), key=lambda i: lowest[i]) == [0, 2, 1]
    ids, sizes, rows = kernels.split_rank_keys(pa.array(first))
    assert ids.to_pylist() == batch.column("id").to_pylist() and sizes.to_pylist() == [5, 13, 8]
    assert rows.to_pylist() == [0, 1, 2]  # row keys default to positions in the batch
    with pytest.raises(ValueError, match="best_column"):
        ExactDedupParams(keep="best")
    with pytest.raises(ValueError, match="bands and rows"):
        MinHashParams(bands=4)


def test_group_decisions_keep_smallest_rank_and_count_sizes():
    batch = pa.table({"id": ["d3", "d1", "d2", "d4"], "text": ["x", "x", "x", "y"]})
    ranks = kernels.rank_keys(batch, ExactDedupParams())
    block = pa.table({"k1": pa.array([5, 5, 5, 6], pa.int64()), "k2": pa.array([1, 1, 1, 1], pa.int64()),
                      "rank": ranks, "what": pa.nulls(4, pa.string())})
    out = executors._group_decisions(block, reason="duplicate", what="same text")
    rows = {r["id"]: r for r in out.to_pylist()}
    assert set(rows) == {"d1", "d2", "d3"}
    assert rows["d1"]["reason"] is None and rows["d1"]["_size"] == 3 and rows["d1"]["dup_cluster"] == "d1"
    assert rows["d2"]["dup_of"] == rows["d3"]["dup_of"] == "d1" and rows["d2"]["reason"] == "duplicate"


def test_bucket_edges_are_stars_and_skip_earlier_only_buckets():
    block = pa.table({"band": pa.array([7, 7, 7, 8, 9, 9], pa.int64()), "node": pa.array([30, 10, 20, 40, 50, 60], pa.int64()),
                      "earlier": [False, False, False, False, True, True],
                      "center": pa.array(["5", "9", "1", "0", "0", "0"])})
    edges = executors._bucket_edges(block)
    # Node 20 has the smallest rank key of bucket 7: the star's centre, whatever the nodes.
    assert sorted(zip(edges.column("a").to_pylist(), edges.column("b").to_pylist())) == [(10, 20), (30, 20)]


def test_star_centres_do_not_depend_on_how_rows_are_numbered(shared_data):
    # The same documents numbered in two orders (as two file layouts would): the same
    # candidate pairs by id, in the gathered form's star edges.
    texts = _bbc(shared_data, 30)
    words = texts[0].split()
    texts += [" ".join(words[:-k]) for k in (2, 3, 4)] + [texts[1] + " more", texts[1] + " again"]
    ids = [f"d{i}" for i in range(len(texts))]
    params = MinHashParams(threshold=0.7)
    bands, rows = params.band_rows
    found = []
    for order in (list(range(len(ids))), list(reversed(range(len(ids))))):
        batch = pa.table({"id": [ids[i] for i in order], "text": [texts[i] for i in order],
                          executors.ROW_KEY: np.arange(len(ids), dtype=np.int64)})
        nodes = executors._signature_rows(batch, params)
        sigs = kernels.signatures_from_bytes(nodes.column("sig"), params.num_perm)
        a, b = executors._star_edges_by_band(kernels.band_keys(sigs, bands, rows), nodes.column("node").to_numpy(),
                                             nodes.column("earlier").to_numpy(zero_copy_only=False),
                                             executors._center_order(nodes.column("rank")))
        node_ids = nodes.column("id").to_pylist()
        found.append(sorted((node_ids[x], node_ids[y]) for x, y in zip(a.tolist(), b.tolist())))
    assert found[0] == found[1] and len(found[0]) >= 4


# --------------------------------------------------------------------------- connected components


def _partitioned(table: pa.Table, key: str, parts: int, fn) -> pa.Table:
    """Run a block function as the shuffle would: rows split by a hash of `key`."""
    if table.num_rows == 0:
        return fn(table)
    codes = np.array([hash(v) % parts for v in table.column(key).to_pylist()])
    outs = [fn(table.filter(pa.array(codes == p))) for p in range(parts)]
    return pa.concat_tables(outs)


def _local_components(edges: list[tuple[str, str]], parts: int) -> tuple[dict[str, str], int]:
    table = pa.table({"x": pa.array([u for u, _ in edges], pa.string()), "y": pa.array([v for _, v in edges], pa.string())})
    for rounds in range(1, 100):
        large = _partitioned(executors._both_directions(table), "x", parts, executors._large_star)
        small = _partitioned(executors._orient_larger_first(large), "x", parts, executors._small_star)
        table, summary = executors._count_unstable(small)
        if summary["unstable"] == 0:
            roots = dict(zip(table.column("x").to_pylist(), table.column("y").to_pylist()))
            assert len(roots) == table.num_rows  # every member once
            return roots, rounds
    raise AssertionError("no convergence")


@pytest.mark.parametrize("seed", range(6))
def test_star_contraction_matches_scipy_components(seed):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(seed)
    n = 300
    names = [f"n{i:04d}" for i in rng.permutation(n)]
    m = 260 if seed % 2 else 120
    pairs = {tuple(sorted(p)) for p in rng.integers(0, n, size=(m, 2)).tolist() if p[0] != p[1]}
    if seed == 0:  # a long chain on top: n0 ~ n1 ~ ... ~ n49
        pairs |= {(i, i + 1) for i in range(49)}
    pairs = sorted(pairs)
    roots, rounds = _local_components([(names[a], names[b]) for a, b in pairs], parts=3)
    rows, cols = zip(*pairs)
    _, labels = connected_components(coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n)), directed=False)
    for label in set(labels.tolist()):
        members = [names[i] for i in np.flatnonzero(labels == label)]
        if len(members) == 1:
            assert members[0] not in roots
            continue
        smallest = min(members)
        assert smallest not in roots
        assert all(roots[x] == smallest for x in members if x != smallest)
    assert rounds < 20


def test_chain_is_one_cluster():
    roots, _ = _local_components([("c", "b"), ("d", "c"), ("e", "d"), ("z", "y")], parts=2)
    assert roots == {"c": "b", "d": "b", "e": "b", "z": "y"}


# --------------------------------------------------------------------------- end to end on Ray


def _clough(shared_data):
    folder = shared_data / "neardup_clough_stevenson" / "data"
    rows = csv.DictReader((folder / "file_information.csv").read_text().splitlines())
    labels = {r["File"]: (r["Task"], r["Category"]) for r in rows if r["Category"] != "orig"}
    docs = [{"id": f"orig_{t}", "text": (folder / f"orig_task{t}.txt").read_text(encoding="latin-1")} for t in "abcde"]
    docs += [{"id": name[:-4], "text": (folder / name).read_text(encoding="latin-1")} for name in sorted(labels)]
    return docs, labels


def _write_jsonl(path, docs):
    with open(path, "wb") as f:
        for doc in docs:
            f.write(orjson.dumps(doc) + b"\n")


def _stage_rows(run_dir, part: str) -> pa.Table:
    files = sorted(glob.glob(str(run_dir / "01-dedup" / part / "*.parquet")))
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def _decisions(run_dir) -> dict[str, tuple]:
    rejected = _stage_rows(run_dir, "rejected")
    return {r["id"]: (r["reject_op"], r["reject_reason"], r["dup_of"], r["dup_cluster"]) for r in rejected.to_pylist()}


@pytest.mark.ray
def test_dedup_stage_on_real_text(tmp_path, shared_data, run_config):
    from pipeline.verify import verify_run

    docs, labels = _clough(shared_data)
    bbc = _bbc(shared_data, 12)
    zh = _clue(shared_data, 6)
    words = bbc[0].split()
    docs += [{"id": f"bbc{i}", "text": t, "url": f"https://www.bbc.co.uk/news/{i}"} for i, t in enumerate(bbc)]
    # A chain: A ~ B ~ C where each step drops a few words at the end.
    docs += [{"id": "chainB", "text": " ".join(words[:-4])}, {"id": "chainC", "text": " ".join(words[:-8]) + " appendix"}]
    docs += [{"id": "exact1", "text": bbc[1].upper().replace(".", " . ")},
             {"id": "url1", "text": bbc[2][::-1], "url": "http://bbc.co.uk/news/3/?utm_source=feed"}]
    docs += [{"id": f"zh{i}", "text": t, "lang": "zh"} for i, t in enumerate(zh)]
    docs += [{"id": "zh0copy", "text": zh[0][:80] + "据报道" + zh[0][80:], "lang": "zh"}]
    _write_jsonl(tmp_path / "docs.jsonl", docs)
    config = {
        "inputs": [{"path": str(tmp_path / "docs.jsonl"), "source": "t", "id_field": "id"}],
        "stages": [{"name": "dedup", "ops": [{"exact_dedup": {}}, {"url_dedup": {}}, {"minhash_dedup": {}}]}],
    }
    stats, run_dir = run_config(config)
    stage = stats["stages"][0]
    assert stage["docs_in"] == len(docs) == stage["docs_out"] + stage["rejected_total"]
    assert all(check.ok for check in verify_run(run_dir)), [c.problems for c in verify_run(run_dir)]
    decided = _decisions(run_dir)

    assert decided["t:exact1"] == ("exact_dedup", "duplicate", "t:bbc1", "t:bbc1")
    assert decided["t:url1"][:3] == ("url_dedup", "duplicate_url", "t:bbc3")
    assert decided["t:chainB"][1:3] == ("near_duplicate", "t:bbc0")
    assert decided["t:chainC"][1:3] == ("near_duplicate", "t:bbc0")  # joined through chainB
    assert decided["t:zh0copy"][1:3] == ("near_duplicate", "t:zh0")

    # Clough & Stevenson: answers whose exact Jaccard with their source passes the threshold
    # share its cluster; independent answers are never merged with anything.
    everything = pa.concat_tables([_stage_rows(run_dir, "data"), _stage_rows(run_dir, "rejected")],
                                  promote_options="permissive")
    cluster = dict(zip(everything.column("id").to_pylist(), everything.column("dup_cluster").to_pylist()))
    params = MinHashParams()
    texts = {d["id"]: d["text"] for d in docs}
    found = 0
    for name, (task, category) in labels.items():
        doc_id = name[:-4]
        if category == "non":
            assert cluster[f"t:{doc_id}"] is None, doc_id
        elif _exact_jaccard(texts[doc_id], texts[f"orig_{task}"], params) >= 0.85:
            assert cluster[f"t:{doc_id}"] == cluster[f"t:orig_{task}"] is not None, doc_id
            found += 1
    assert found >= 2
    extra = stage["extra"]["minhash_dedup"]
    assert extra["docs_removed"] == sum(1 for d in decided.values() if d[0] == "minhash_dedup")
    assert sum(int(k) * v for k, v in extra["cluster_size_histogram"].items()) == extra["docs_removed"] + extra["clusters"]
    assert extra["bytes_removed"] > 0
    assert cluster["t:bbc0"] == "t:bbc0" and cluster["t:bbc5"] is None
    index = tmp_path / "index"
    shutil.copytree(run_dir / "01-dedup" / "minhash_index", index)  # the next runs reuse the run folder
    assert json.loads((index / "index.json").read_text())["documents"] == extra["docs_compared"]

    # A rerun gives the same decisions.
    run_config(config, redo=True)
    assert _decisions(run_dir) == decided

    # An earlier corpus: a new copy of bbc0 is rejected as seen before; new text is kept.
    _write_jsonl(tmp_path / "new.jsonl", [{"id": "again", "text": " ".join(words[:-2])},
                                          {"id": "fresh", "text": bbc[7][::-1]}])
    later = {"inputs": [{"path": str(tmp_path / "new.jsonl"), "source": "n", "id_field": "id"}],
             "stages": [{"name": "dedup", "ops": [{"minhash_dedup": {"against": [str(index)]}}]}]}
    stats, _ = run_config(later)
    decided_later = _decisions(run_dir)
    assert decided_later == {"n:again": ("minhash_dedup", "seen_before", "t:bbc0", "t:bbc0")}
    assert stats["stages"][0]["extra"]["minhash_dedup"]["docs_seen_before"] == 1


def test_minhash_stage_without_any_candidate_pair_keeps_everything(tmp_path, shared_data, run_config):
    # Distinct real Chinese and English documents in two files, exact copies removed by
    # exact_dedup first: no two remaining documents share an LSH bucket, so the verification and component shuffles
    # have nothing to work on (they once failed concatenating empty datasets' blocks).
    articles = _clue(shared_data, 120) + _bbc(shared_data, 120)
    for part in range(2):
        docs = [{"id": f"bbc{part}-{i}", "text": t} for i, t in enumerate(articles[part::2])]
        docs += [{"id": f"copy{part}", "text": articles[part]}]
        _write_jsonl(tmp_path / f"docs{part}.jsonl", docs)
    config = {"inputs": [{"path": str(tmp_path / f"docs{part}.jsonl"), "source": "t", "id_field": "id"}
                         for part in range(2)],
              "ray": {"batch_size": 16},
              "stages": [{"name": "dedup", "ops": [{"exact_dedup": {}}, {"minhash_dedup": {}}]}]}
    stats, run_dir = run_config(config)
    stage = stats["stages"][0]
    extra = stage["extra"]["minhash_dedup"]
    assert extra["candidate_pairs"] == 0 and extra["docs_removed"] == 0 and extra["clusters"] == 0
    assert stage["docs_in"] == len(articles) + 2 and stage["docs_out"] == len(articles)
    assert stage["rejected"] == {"exact_dedup/duplicate": 2}
    from pipeline.verify import verify_run

    assert all(check.ok for check in verify_run(run_dir))


@pytest.mark.ray
def test_gathered_and_distributed_forms_agree_and_never_join_by_id(tmp_path, shared_data, run_config):
    # The same documents through the gathered form (default budget) and the distributed one
    # (a budget of one byte): the same decisions, row by row. Two inputs repeat an id: only
    # the row that is a duplicate may be rejected, which a join by id would get wrong.
    docs, _ = _clough(shared_data)
    bbc, zh = _bbc(shared_data, 12), _clue(shared_data, 8)
    words = bbc[0].split()
    docs += [{"id": f"bbc{i}", "text": t, "url": f"https://www.bbc.co.uk/news/{i}"} for i, t in enumerate(bbc)]
    docs += [{"id": "chainB", "text": " ".join(words[:-4])}, {"id": "chainC", "text": " ".join(words[:-8]) + " end"},
             {"id": "exact1", "text": bbc[1].upper()}, {"id": "url1", "text": zh[5], "url": "http://bbc.co.uk/news/3"}]
    docs += [{"id": f"zh{i}", "text": t, "lang": "zh"} for i, t in enumerate(zh[:5])]
    docs += [{"id": "zh0copy", "text": zh[0][:80] + "据报道" + zh[0][80:], "lang": "zh"}]
    docs += [{"id": "zz", "text": bbc[4]}, {"id": "zz", "text": zh[6]},  # bbc4's copy, a distinct text
             {"id": "zz", "text": zh[7][:100] + "据报道" + zh[7][100:]}, {"id": "zh7", "text": zh[7]}]
    _write_jsonl(tmp_path / "docs.jsonl", docs)
    outcomes = {}
    for form, budget in (("gathered", "2GB"), ("distributed", 1)):
        config = {"inputs": [{"path": str(tmp_path / "docs.jsonl"), "source": "t", "id_field": "id"}],
                  "ray": {"global_memory": budget, "batch_size": 16},
                  "stages": [{"name": "dedup", "ops": [{"exact_dedup": {}}, {"url_dedup": {}}, {"minhash_dedup": {}}]}]}
        stats, run_dir = run_config(config, redo=True)
        extra = stats["stages"][0]["extra"]
        assert {extra[op]["execution"] for op in ("exact_dedup", "url_dedup", "minhash_dedup")} == {form}
        rows = pa.concat_tables([_stage_rows(run_dir, "data"), _stage_rows(run_dir, "rejected")],
                                promote_options="permissive")
        outcomes[form] = sorted(((r["id"], r["text"][:40], r["reject_op"], r["reject_reason"], r["dup_of"],
                                  r["dup_cluster"]) for r in rows.to_pylist()), key=repr)
        assert len(outcomes[form]) == len(docs)
        # The reader renames the repeats `t:zz#2`, `t:zz#3` (pipeline/ids.py); the row-key joins
        # must give the same decisions whatever the ids.
        again = [o for o in outcomes[form] if o[0].split("#")[0] == "t:zz"]
        assert sorted((o[2:4] for o in again), key=repr) == [
            ("exact_dedup", "duplicate"), ("minhash_dedup", "near_duplicate"), (None, None)], again
    assert outcomes["gathered"] == outcomes["distributed"]
    by_id = {o[0]: o for o in outcomes["gathered"]}
    assert by_id["t:chainC"][3:5] == ("near_duplicate", "t:bbc0") and by_id["t:zh0copy"][4] == "t:zh0"


@pytest.mark.ray
@pytest.mark.parametrize("budget", ["2GB", 1])
def test_a_dedup_stage_writes_once_and_decides_as_one_operator_per_stage(tmp_path, shared_data, run_config, budget):
    # exact + URL + MinHash in one stage after a first stage (the gathered operators read the
    # first stage's files with each other's decisions as overlays, nothing written in between)
    # against the same three operators as three stages (each writing its output): the same
    # kept rows and the same decisions; and the one-stage run writes its files once.
    docs, _ = _clough(shared_data)
    bbc, zh = _bbc(shared_data, 12), _clue(shared_data, 8)
    docs += [{"id": f"bbc{i}", "text": t, "url": f"https://www.bbc.co.uk/news/{i}"} for i, t in enumerate(bbc)]
    docs += [{"id": "exact1", "text": bbc[1].upper()}, {"id": "url1", "text": zh[6], "url": "http://bbc.co.uk/news/3"},
             {"id": "exact2", "text": zh[2]}, {"id": "zh0copy", "text": zh[0][:80] + "据报道" + zh[0][80:]}]
    docs += [{"id": f"zh{i}", "text": t} for i, t in enumerate(zh[:5])]
    _write_jsonl(tmp_path / "docs.jsonl", docs)
    dedup_ops = [{"exact_dedup": {}}, {"url_dedup": {}}, {"minhash_dedup": {}}]
    base = {"inputs": [{"path": str(tmp_path / "docs.jsonl"), "source": "t", "id_field": "id"}],
            "ray": {"global_memory": budget, "batch_size": 16}}
    outcomes = {}
    for layout, stages in (("one", [{"name": "dedup", "ops": dedup_ops}]),
                           ("three", [{"name": name, "ops": [op]} for name, op in zip(("exact", "url", "near"), dedup_ops)])):
        config = {**base, "stages": [{"name": "clean", "ops": [{"normalize": {}}]}, *stages]}
        shutil.rmtree(tmp_path / "run", ignore_errors=True)  # the layouts name their stages differently
        stats, run_dir = run_config(config)
        rows = []
        for stage in sorted(run_dir.glob("0[2-4]-*")):
            for part in ("data", "rejected") if stage == sorted(run_dir.glob("0[2-4]-*"))[-1] else ("rejected",):
                rows += [(r["id"], r.get("reject_op"), r.get("reject_reason"), r.get("dup_of"), r.get("dup_cluster"))
                         for f in sorted(stage.glob(f"{part}/*.parquet")) for r in pq.read_table(f).to_pylist()]
        outcomes[layout] = sorted(rows, key=repr)
        assert len(outcomes[layout]) == len(docs)
        from pipeline.verify import verify_run

        assert all(check.ok for check in verify_run(run_dir)), [c.problems for c in verify_run(run_dir)]
        if layout == "one":
            written = {f.name.split("-")[0] for part in ("data", "rejected")
                       for f in (run_dir / "02-dedup" / part).glob("*.parquet")}
            # Gathered: one write. Distributed: each operator's output is written for the next.
            assert written == ({"s0"} if budget == "2GB" else {"s0", "s1", "s2"}), written
            extra = stats["stages"][1]["extra"]
            assert {extra[op]["execution"] for op in extra} == {"gathered" if budget == "2GB" else "distributed"}
    assert outcomes["one"] == outcomes["three"]
    decided = {o[0]: o[1:3] for o in outcomes["one"]}
    assert decided["t:exact1"] == decided["t:zh2"] == ("exact_dedup", "duplicate")  # t:exact2 < t:zh2 survives
    assert decided["t:url1"] == ("url_dedup", "duplicate_url")
    assert decided["t:zh0copy"] == ("minhash_dedup", "near_duplicate")
