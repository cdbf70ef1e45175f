"""tokenize_pack: encoding, the three packing modes, shard plans, and runs through Ray that end
in shards a trainer can read (round trip, boundaries, datasets, manifest counts, verify)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators import tokenize as K
from pipeline import tokenizer as T
from trainer.shards import (
    Manifest,
    iter_shards,
    positions_from_doc_lens,
    read_shard,
    validate_shards,
)

SEQ = 64
PAD = 2
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory, shared_data):
    """A small BPE tokenizer on real English and Chinese text, in an HF folder."""
    out = tmp_path_factory.mktemp("tok")
    en = [f.read_text(encoding="latin-1") for f in sorted((shared_data / "en_bbc_news/bbc").glob("*/*.txt"))[::4]]
    zh = (shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt").read_text().splitlines()[::3]
    T.train_sentencepiece(en + zh, out, T.TrainOptions(vocab_size=4000, character_coverage=0.995))
    return out


@pytest.fixture(scope="module")
def docs(shared_data):
    """Real documents: short Weibo-like reviews, news paragraphs, whole English articles."""
    zh = (shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt").read_text().splitlines()[:120]
    web = (shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt").read_text().splitlines()[:60]
    en = [f.read_text(encoding="latin-1") for f in sorted((shared_data / "en_bbc_news/bbc/sport").glob("*.txt"))[:40]]
    return [t for t in zh + web + en if t.strip()]


def stream_docs(lengths):
    """Documents of the given lengths with distinct token values, as one stream."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.arange(10, 10 + int(sum(lengths)), dtype=np.int32), starts, np.asarray(lengths, np.int64)


def check_rows(packed, seq_len=SEQ):
    """Format invariants of every packed sequence."""
    for ids, lens, mask, pad in zip(packed.input_ids, packed.doc_lens, packed.loss_mask, packed.padding):
        assert sum(lens) == seq_len and all(n > 0 for n in lens)
        starts = np.cumsum([0, *lens[:-1]])
        assert (mask[starts] == 0).all()
        if pad:
            assert lens[-1] == pad and (ids[seq_len - pad:] == PAD).all() and not mask[seq_len - pad:].any()
        assert (positions_from_doc_lens(lens)[starts] == 0).all()


def segments(packed):
    """Every non-padding segment's tokens."""
    out = []
    for ids, lens, pad in zip(packed.input_ids, packed.doc_lens, packed.padding):
        at = 0
        for n in lens[:-1] if pad else lens:
            out.append(ids[at:at + n].tolist())
            at += n
    return out


# --------------------------------------------------------------------------- packing kernels


def test_concat_cuts_every_seq_len_and_marks_continuations():
    tokens, starts, lengths = stream_docs([10, 100, 5, 20])  # 135 tokens
    packed = K.pack_stream(tokens, starts, SEQ, PAD, doc_ends=starts + lengths)
    check_rows(packed)
    assert packed.sequences == 3 and packed.padding.tolist() == [0, 0, 57]
    assert packed.doc_lens == [[10, 54], [46, 5, 13], [7, 57]]
    assert packed.input_ids.reshape(-1)[:135].tolist() == tokens.tolist()
    assert packed.continued_segments == 2 and packed.documents_split == 2  # the 100 and the 20
    # A stream that starts inside a document (a later shard) opens with a continued segment.
    tail = K.pack_stream(tokens[30:94], starts[2:] - 30, SEQ, PAD)
    assert tail.doc_lens == [[64]] and tail.continued_segments == 1


def test_concat_masks_prompt_tokens():
    tokens, starts, _ = stream_docs([30, 30])
    target = K._target_mask(60, starts, np.array([5, 0]))
    packed = K.pack_stream(tokens, starts, SEQ, PAD, target)
    assert packed.loss_mask[0, :5].tolist() == [0] * 5 and packed.loss_mask[0, 5:30].all()
    assert packed.loss_mask[0, 30] == 0 and packed.loss_mask[0, 31:60].all()


def test_first_fit_decreasing_matches_the_definition():
    rng = random.Random(0)
    for _ in range(30):
        sizes = [rng.randint(1, 50) for _ in range(rng.randint(1, 120))]
        bins, used = K.first_fit_decreasing(sizes, 50)
        naive: list[int] = []
        expected = {}
        for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
            b = next((b for b, free in enumerate(naive) if free >= sizes[i]), None)
            if b is None:
                naive.append(50)
                b = len(naive) - 1
            naive[b] -= sizes[i]
            expected[i] = b
        assert bins.tolist() == [expected[i] for i in range(len(sizes))] and used == len(naive)
    with pytest.raises(ValueError):
        K.first_fit_decreasing([51], 50)


def test_first_fit_never_cuts_short_documents():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 200, size=300)
    tokens, starts, lengths = stream_docs(lengths)
    packed = K.pack_first_fit(tokens, starts, lengths, SEQ, PAD)
    check_rows(packed)
    pieces = segments(packed)
    docs = [tokens[s:s + n].tolist() for s, n in zip(starts, lengths)]
    short = [d for d in docs if len(d) <= SEQ]
    assert sorted(short) == sorted(p for p in pieces if p and p in short)
    assert packed.documents_split == int((lengths > SEQ).sum())
    # Long documents come back whole from their pieces, in order.
    by_first = {p[0]: p for p in pieces}
    for doc in (d for d in docs if len(d) > SEQ):
        rebuilt, at = [], doc[0]
        while len(rebuilt) < len(doc):
            rebuilt += by_first[at]
            at = doc[len(rebuilt)] if len(rebuilt) < len(doc) else None
        assert rebuilt == doc
    assert sum(len(p) for p in pieces) == int(lengths.sum())
    concat = K.pack_stream(tokens, starts, SEQ, PAD, doc_ends=starts + lengths)
    assert packed.documents_split < concat.documents_split  # fewer documents cut


def test_same_type_never_mixes_types():
    tokens, starts, lengths = stream_docs([20, 20, 20, 30, 30, 10])
    types = ["qa", "chat", "qa", "chat", "qa", "code"]
    packed = K.pack_same_type(tokens, starts, lengths, types, SEQ, PAD)
    check_rows(packed)
    kind = {int(tokens[s]): t for s, t in zip(starts, types)}
    for segs in (segments(K.Packed(packed.input_ids[i:i + 1], [packed.doc_lens[i]], packed.loss_mask[i:i + 1],
                                   packed.padding[i:i + 1])) for i in range(packed.sequences)):
        assert len({kind[s[0]] for s in segs}) == 1
    # qa 30+20 | 20, chat 30+20, code 10: first-fit decreasing inside each type.
    content = sorted(SEQ - int(p) for p in packed.padding)
    assert packed.sequences == 4 and content == [10, 20, 50, 50]


# --------------------------------------------------------------------------- encoding


def test_encode_frames_documents_and_counts_truncation(tok_dir):
    tok = K.load_tokenizer(str(tok_dir))
    texts = ["Hello world.", "", "   ", "中文文本，测试。" * 20]
    plain = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    enc = K.encode_documents(tok, texts, bos=BOS, eos=EOS)
    assert enc.text_tokens.tolist() == [len(p) for p in plain]
    assert enc.tokens[enc.offsets[0]:enc.offsets[1]].tolist() == [BOS, *plain[0], EOS]
    assert enc.lengths[1] == 0 and not enc.prefix.any()
    cut = K.encode_documents(tok, texts, bos=BOS, eos=EOS, max_doc_tokens=10)
    assert cut.lengths.max() == 10 and cut.truncated[3] == len(plain[3]) + 2 - 10
    assert cut.tokens[cut.offsets[3]:cut.offsets[4]].tolist() == [BOS, *plain[3][:9]]
    prompt = K.encode_documents(tok, ["Question: why? Answer: because."], bos=BOS, eos=EOS, prefix_chars=[15])
    q = len(tok.encode("Question: why?", add_special_tokens=False).ids)
    assert prompt.prefix[0] == 1 + q


def test_encode_batch_table_accounts_for_every_row(tok_dir):
    tok = K.load_tokenizer(str(tok_dir))
    special = K.special_ids(tok_dir)
    assert (special.bos, special.eos, special.pad) == (1, 2, 2)
    batch = pa.table({
        "id": ["a", "b", "c", "d"],
        "text": ["Some English.", "  ", "已经被拒绝", "中文。"],
        "source": ["web", "web", "web", None],
        "lang": ["en", None, "zh", "zh"],
        "meta": [json.dumps({"bucket": 2, "task_type": "qa"}), None, None, json.dumps({"bucket": "1"})],
        "reject_op": [None, None, "length_filter", None],
    })
    params = K.TokenizePackParams(tokenizer=str(tok_dir), mode="same_type_pad")
    out = K.encode_batch_table(batch, params, tok, special)
    assert out.reasons.to_pylist() == [None, "no_tokens", None, None]
    stat = out.tokens_stat.to_pylist()
    assert stat[1] == 0 and stat[2] is None and stat[0] > 0
    table, groups = K.group_token_table([out.token_table])
    assert [(g["bucket"], g["source"], g["docs"]) for g in groups] == [(1, "unknown", 1), (2, "web", 1)]
    assert table.column("type").to_pylist() == ["", "qa"]
    assert groups[1]["tokens_by_lang"] == {"en": stat[0] + 2}
    # Issue 17 item 4: one bad bucket value failed the whole stage; now it rejects its row.
    bad = batch.set_column(4, "meta", pa.array([json.dumps({"bucket": b}) for b in ("../../x", 1e12, -1, 3)]))
    out = K.encode_batch_table(bad, params, tok, special)
    assert out.reasons.to_pylist() == ["bad_bucket", "bad_bucket", None, None]  # row 2 was rejected before
    assert "got '../../x'" in out.details[0].as_py() and "got '1000000000000.0'" in out.details[1].as_py()
    assert [g["bucket"] for g in K.group_token_table([out.token_table])[1]] == [3]
    as_column = batch.append_column("bucket", pa.array([1, 2, 3, 10**12], pa.int64()))
    out = K.encode_batch_table(as_column, K.TokenizePackParams(tokenizer=str(tok_dir), prefix_chars_field="p"),
                               tok, special)
    assert out.reasons.to_pylist() == [None, "no_tokens", None, "bad_bucket"]
    prefixed = batch.append_column("p", pa.array(["x", "2", None, "3"]))
    out = K.encode_batch_table(prefixed, K.TokenizePackParams(tokenizer=str(tok_dir), prefix_chars_field="p"),
                               tok, special)
    assert out.reasons.to_pylist()[0] == "bad_prefix_chars"


def test_params_are_checked():
    with pytest.raises(ValueError, match="shard_tokens"):
        K.TokenizePackParams(tokenizer="x", seq_len=4096, shard_tokens=1000)
    with pytest.raises(ValueError):
        K.TokenizePackParams(tokenizer="x", mode="best_fit")


# --------------------------------------------------------------------------- in process, both passes


def two_passes(tmp_path: Path, tok_dir: Path, table: pa.Table, **params):
    """The executor's kernels without Ray: encode in three batches, plan, pack every shard."""
    p = K.TokenizePackParams(tokenizer=str(tok_dir), **params)
    tok, special = K.load_tokenizer(str(tok_dir)), K.special_ids(tok_dir)
    files = []
    for i, lo in enumerate(range(0, table.num_rows, 70)):
        enc = K.encode_batch_table(table.slice(lo, 70), p, tok, special)
        sorted_table, groups = K.group_token_table([enc.token_table])
        K.write_token_file(sorted_table, tmp_path / "tokens" / f"part-{i:05d}.arrow")
        files.append((f"part-{i:05d}.arrow", groups))
    plans = K.plan_shards(files, p.seq_len, p.mode, p.shard_tokens)
    results = [K.pack_shard(tmp_path / "tokens", tmp_path / "shards", plan, p.seq_len, p.mode, special.pad,
                            p.shuffle, p.seed) for plan in plans]
    return plans, results, files


def decode_docs(tok, table):
    """Documents rebuilt from shards packed with BOS and EOS: join segments in shard order,
    split at BOS."""
    stream = np.concatenate([np.asarray(row[:sum(lens) - (lens[-1] if pad_last(row, lens) else 0)])
                             for row, lens in zip(table.column("input_ids").to_pylist(),
                                                  table.column("doc_lens").to_pylist())])
    cuts = np.flatnonzero(stream == BOS)
    return [tok.decode(stream[a + 1:b - 1].tolist()) for a, b in zip(cuts, [*cuts[1:], len(stream)])]


def pad_last(row, lens):
    return len(lens) > 1 and all(t == PAD for t in row[-lens[-1]:])


def test_round_trip_concat_across_shards(tmp_path, tok_dir, docs):
    table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "source": ["s"] * len(docs)})
    plans, results, _ = two_passes(tmp_path, tok_dir, table, seq_len=128, shard_tokens=2000, shuffle=False)
    assert len(plans) > 3 and all(r.info.sequences == 15 for r in results[:-1])  # 2000 // 128 sequences
    assert sum(r.info.padding_tokens for r in results[:-1]) == 0  # only the last sequence pads
    assert sum(r.documents for r in results) == len(docs)
    shards = pa.concat_tables([read_shard(tmp_path / "shards" / p["path"]) for p in plans])
    assert decode_docs(K.load_tokenizer(str(tok_dir)), shards) == docs


@pytest.mark.parametrize("mode", ["first_fit", "same_type_pad"])
def test_round_trip_bin_packing(tmp_path, tok_dir, docs, mode):
    types = ["review" if i < 120 else "news" for i in range(len(docs))]
    table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "source": ["s"] * len(docs),
                      "task_type": types})
    plans, results, _ = two_passes(tmp_path, tok_dir, table, seq_len=256, shard_tokens=5000, mode=mode)
    tok = K.load_tokenizer(str(tok_dir))
    got = []
    for plan in plans:
        shard = read_shard(tmp_path / "shards" / plan["path"])
        for row, lens in zip(shard.column("input_ids").to_pylist(), shard.column("doc_lens").to_pylist()):
            at = 0
            for n in lens[:-1] if pad_last(row, lens) else lens:
                if row[at] == BOS and row[at + n - 1] == EOS:  # a whole document
                    got.append(tok.decode(row[at + 1:at + n - 1]))
                at += n
    whole = [d for d, n in zip(docs, K.encode_documents(tok, docs, bos=BOS, eos=EOS).lengths) if n <= 256]
    assert sorted(got) == sorted(whole)
    assert sum(r.documents for r in results) == len(docs)


def test_plans_cover_each_group_once():
    files = [("a", [{"bucket": 0, "source": "x", "rows": [0, 3], "tokens": 300}]),
             ("b", [{"bucket": 0, "source": "x", "rows": [0, 2], "tokens": 250},
                    {"bucket": 1, "source": "y", "rows": [2, 4], "tokens": 90}])]
    plans = K.plan_shards(files, seq_len=64, mode="concat", shard_tokens=200)
    xs = [p for p in plans if p["source"] == "x"]
    assert [(p["start"], p["stop"]) for p in xs] == [(0, 192), (192, 384), (384, 550)]
    assert [f["file"] for f in xs[1]["files"]] == ["a", "b"] and xs[1]["files"][1]["offset"] == 300
    assert plans[-1]["path"] == "bucket-001/y-00000.arrow"
    assert K.shard_path(0, "中文/web", 1).startswith("bucket-000/web-") and K.shard_path(0, "a", 1) == "bucket-000/a-00001.arrow"


# --------------------------------------------------------------------------- through Ray


def write_corpus(path: Path, docs):
    with open(path, "w") as f:
        for i, text in enumerate(docs):
            record = {"id": f"d{i}", "text": text, "bucket": i % 3, "task_type": ["qa", "chat"][i % 2]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.write(json.dumps({"id": "blank", "text": "   \n "}) + "\n")
        f.write(json.dumps({"id": "short", "text": "ok"}) + "\n")


def pack_config(corpus: Path, tok_dir: Path, **params):
    return {"run": {"name": "pack"}, "ray": {"batch_size": 64},
            "inputs": [{"path": str(corpus), "source": "mix"}],
            "stages": [{"name": "pack", "ops": [
                {"length_filter": {"min_chars": 3}},
                {"tokenize_pack": {"tokenizer": str(tok_dir / "tokenizer.model"), **params}}]}]}


@pytest.mark.ray
def test_run_writes_shards_a_trainer_can_read(tmp_path, tok_dir, docs, run_config, capsys, engine):
    import datasets
    from transformers import AutoTokenizer

    from pipeline.cli import main
    from pipeline.verify import verify_run

    write_corpus(tmp_path / "docs.jsonl", docs)
    config = pack_config(tmp_path / "docs.jsonl", tok_dir, seq_len=128, shard_tokens=3000, shuffle=False)
    stats, run = run_config(config, engine=engine)
    stage = stats["stages"][0]
    assert stage["docs_in"] == len(docs) + 2 and stage["docs_out"] == len(docs)
    # The reader rejects the blank record; `no_tokens` is covered by the encoder's test.
    assert stage["rejected"] == {"read/empty_text": 1, "length_filter/too_short": 1}
    assert all(c.ok for c in verify_run(run))

    manifest = validate_shards(run / "shards")
    assert manifest.documents == len(docs) and manifest.pipeline_config_sha256
    assert manifest.curriculum == [0, 1, 2] and set(manifest.tokens_by_source) == {"mix"}
    content = sum(s.tokens - s.padding_tokens for s in manifest.shards)
    assert content == sum(manifest.tokens_by_bucket.values()) == sum(manifest.tokens_by_lang.values())
    assert manifest.padding_tokens == sum(s.padding_tokens for s in manifest.shards)
    assert manifest.padding_tokens < 3 * 128  # concat: one padded sequence per bucket at most
    assert len(manifest.shards) > 3
    tok = AutoTokenizer.from_pretrained(str(run / "shards" / manifest.tokenizer.path))
    assert len(tok) == manifest.tokenizer.vocab_size == 4000

    # Counts in the manifest are the shards' contents; boundaries are exact; docs come back.
    by_bucket: dict[int, list[pa.Table]] = {}
    for info, table in iter_shards(run / "shards", manifest):
        assert set(table.column("bucket").to_pylist()) == {info.bucket}
        mask = np.asarray(table.column("loss_mask").to_pylist())
        assert int(mask.sum()) == info.target_tokens
        for pos, lens in zip(table.column("position_ids").to_pylist(), table.column("doc_lens").to_pylist()):
            assert pos == positions_from_doc_lens(lens).tolist()
        by_bucket.setdefault(info.bucket, []).append(table)
    for bucket in range(3):  # documents continue from one shard into the next
        rebuilt = decode_docs(K.load_tokenizer(str(tok_dir)), pa.concat_tables(by_bucket[bucket]))
        assert rebuilt == [d for i, d in enumerate(docs) if i % 3 == bucket]
    ds = datasets.Dataset.from_file(str(run / "shards" / manifest.shards[0].path))
    assert len(ds) == manifest.shards[0].sequences and len(ds[0]["input_ids"]) == 128

    rows = pa.concat_tables([pq.read_table(p) for p in sorted((run / "01-pack/data").glob("*.parquet"))])
    assert rows.column("stat.tokens").to_numpy().min() > 0
    extra = stage["extra"]["tokenize_pack"]
    assert extra["shards"] == len(manifest.shards) and extra["non_padding_fraction"] > 0.99
    # One input file, one encode task on 2 CPUs: the encoder's thread pool uses the idle one.
    assert extra["encode_tasks"] == 1 and extra["parallel_encode"] is True

    assert main(["inspect", str(run), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    assert "⟦doc 0" in out and "source mix" in out and "by bucket" in out
    last = run / "shards" / manifest.shards[-1].path
    assert main(["inspect", str(last), "--start", str(manifest.shards[-1].sequences - 1)]) == 0
    assert "⟦pad × " in capsys.readouterr().out  # a group's last sequence is padded
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


@pytest.mark.ray
def test_same_type_mode_and_reruns_are_identical(tmp_path, tok_dir, docs, run_config):
    write_corpus(tmp_path / "docs.jsonl", docs[:150])
    config = pack_config(tmp_path / "docs.jsonl", tok_dir, seq_len=256, shard_tokens=4000,
                         mode="same_type_pad", seed=7)
    _, run = run_config(config)
    first = Manifest.load(run / "shards")
    for _, table in iter_shards(run / "shards", first):
        assert table.num_rows > 0
    assert first.pack_mode == "same_type_pad" and first.padding_tokens > 0
    _, run = run_config(config, redo=True)
    again = validate_shards(run / "shards")
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in first.shards]


@pytest.mark.ray
def test_analyze_writes_no_shards_and_bad_tokenizer_is_one_line(tmp_path, tok_dir, docs, run_config):
    from common.errors import KilnError

    write_corpus(tmp_path / "docs.jsonl", docs[:20])
    stats, run = run_config(pack_config(tmp_path / "docs.jsonl", tok_dir), analyze=True)
    stage = stats["stages"][0]
    assert stage["rejected_total"] == 1 and stage["would_reject"] == {"length_filter/too_short": 1}
    assert stage["extra"]["tokenize_pack"]["content_tokens"] > 0
    assert not (run / "analyze" / "shards").exists() and not list((run / "analyze").glob("*/shards"))
    with pytest.raises(KilnError, match=r"tokenize_pack.tokenizer: .*does not exist"):
        run_config(pack_config(tmp_path / "docs.jsonl", tmp_path / "none"))


@pytest.mark.ray
def test_ray_encodes_in_the_read_tasks_without_a_scratch_copy(tmp_path, tok_dir, docs, run_config, monkeypatch):
    """tokenize_pack on Ray: the encode pass is one plain task per group of input files (the
    tasks that read them: no Ray Data pass, no scratch copy of the rows written first), parts
    numbered in group order, and the shards hold every kept document once, in input order."""
    import pipeline.engines.ray as ray_engine
    from pipeline.verify import verify_run

    folder = tmp_path / "in"
    folder.mkdir()
    texts = docs[:160]
    for f in range(4):
        with open(folder / f"part-{f}.jsonl", "w") as out:
            for i in range(f * 40, f * 40 + 40):
                out.write(json.dumps({"id": f"d{i}", "text": texts[i], "bucket": i % 2}, ensure_ascii=False) + "\n")
            out.write(json.dumps({"id": f"blank{f}", "text": "  "}) + "\n")  # rejected by the reader
    calls, writes = [], []
    run_tasks, write_stage = ray_engine._run_tasks, ray_engine.RayEngine.write_stage

    def spy_tasks(fn, items, name):
        results = run_tasks(fn, items, name)
        calls.append((name, len(items), results))
        return results

    def spy_write(self, frame, data_dir, *args, **kwargs):
        writes.append(Path(data_dir).name)
        return write_stage(self, frame, data_dir, *args, **kwargs)

    monkeypatch.setattr(ray_engine, "_run_tasks", spy_tasks)
    monkeypatch.setattr(ray_engine.RayEngine, "write_stage", spy_write)
    monkeypatch.setattr(ray_engine, "MIN_READ_BYTES", 1)  # a read group per file, small as they are
    stats, run = run_config(pack_config(folder, tok_dir, seq_len=128, shard_tokens=2000, shuffle=False))

    name, tasks, results = calls[0]  # the encode pass, before anything was written
    assert (name, tasks) == ("KilnStage", 4)
    assert [r["file"] for r in results] == [f"part-{i:05d}.arrow" for i in range(4)]
    assert writes == ["data"]  # the stage's final write only: no scratch segment
    stage = stats["stages"][0]
    assert stage["docs_in"] == 164 and stage["docs_out"] == 160 and stage["rejected"] == {"read/empty_text": 4}
    assert stage["bytes_in"] == sum(len(t.encode()) for t in texts) + 8
    # As many encode tasks as CPUs or more: one encoder thread each.
    assert stage["extra"]["tokenize_pack"]["parallel_encode"] is False
    manifest = validate_shards(run / "shards")
    assert manifest.documents == 160 and all(c.ok for c in verify_run(run))
    tok = K.load_tokenizer(str(tok_dir))
    for bucket in range(2):
        tables = [table for info, table in iter_shards(run / "shards", manifest) if info.bucket == bucket]
        assert decode_docs(tok, pa.concat_tables(tables)) == texts[bucket::2]
