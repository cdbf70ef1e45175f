"""`kiln ablate`: the held-out text stays out of every arm's training data (checked by hash),
and a tiny end-to-end ablation writes its comparison and the report's Ablation section."""

from __future__ import annotations

import json
import random

import orjson
import pytest
import yaml

from common.errors import ConfigError
from pipeline import ablate

WORDS = ["data", "model", "token", "clean", "text", "river", "city", "market", "music", "school", "paper", "light", "table", "water", "garden", "morning", "evening", "window", "train", "station", "letter", "number", "story"]


def _corpus(path, n=240, seed=0):
    """English sentences of a small vocabulary, with planted noise the cleaning removes: very
    short lines and exact copies of earlier documents."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if i % 10 == 3:
            docs.append("click here")  # too short: the clean arm drops it
        elif i % 10 == 7 and docs:
            docs.append(docs[rng.randrange(len(docs))])  # an exact copy
        else:
            sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
                         for _ in range(rng.randint(2, 6))]
            docs.append(" ".join(sentences))
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return docs


@pytest.fixture
def ablation_config(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = _corpus(corpus)
    pipeline = tmp_path / "clean.yaml"
    pipeline.write_text(yaml.safe_dump({
        "run": {"name": "tiny-clean"},
        "ray": {"num_cpus": 2, "object_store_memory": "300MB", "batch_size": 64},
        "inputs": [{"path": str(corpus), "source": "web"}],
        "stages": [{"name": "clean", "ops": [{"length_filter": {"min_chars": 40}}]}],
    }))
    config = {
        "output": str(tmp_path / "ablate"),
        "pipeline": str(pipeline),
        "split": {"heldout_fraction": 0.15, "salt": "test"},
        "tokenizer": {"train": {"vocab_size": 300}},
        "pack": {"seq_len": 32, "shard_tokens": 4096},
        "arms": ["raw", "clean"],
        "budget_tokens": 1500,
        "train": {"model": {"config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                       "num_attention_heads": 2, "num_key_value_heads": 2,
                                       "max_position_embeddings": 64}},
                  "train": {"micro_batch_size": 4, "lr": 1.0e-3, "log_every": 1, "progress": False}},
        "eval": {"batch_size": 8, "device": "cpu"},
    }
    path = tmp_path / "ablate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config, docs


def test_split_is_by_hash_and_deterministic():
    texts = [f"document number {i}" for i in range(2000)]
    held = [t for t in texts if ablate.is_heldout(ablate.doc_hash(t, "s"), 0.1)]
    assert 150 < len(held) < 250  # about 10%
    assert held == [t for t in texts if ablate.is_heldout(ablate.doc_hash(t, "s"), 0.1)]
    assert held != [t for t in texts if ablate.is_heldout(ablate.doc_hash(t, "other salt"), 0.1)]


def test_curriculum_coverage_says_which_buckets_a_budget_reaches():
    from types import SimpleNamespace

    manifest = SimpleNamespace(curriculum=[0, 1, 2], tokens_by_bucket={"0": 100, "1": 200, "2": 700})
    short = ablate.curriculum_coverage(manifest, 200)
    assert [(b["bucket"], b["share_trained"]) for b in short["buckets"]] == [(0, 1.0), (1, 0.5)]
    assert not short["all_buckets"]
    assert ablate.curriculum_coverage(manifest, 1000)["all_buckets"]


def test_ablation_keeps_heldout_out_of_training(ablation_config, ray_local):
    pytest.importorskip("transformers")
    path, config, docs = ablation_config
    results = ablate.run_ablation(path, ablate.AblateRequest(echo=lambda _: None))
    out = ablate.Path(config["output"])

    # The held-out hashes are those of the held-out texts, and no training text has one.
    recorded = set((out / "ablation" / "heldout_hashes.txt").read_text().split())
    expected = {ablate.doc_hash(d, "test") for d in docs if ablate.is_heldout(ablate.doc_hash(d, "test"), 0.15)}
    assert recorded == expected and recorded
    split = ablate.Path(results["split"]["folder"])
    train_texts = [orjson.loads(x)["text"] for x in (split / "train" / "web.jsonl").read_bytes().splitlines()]
    heldout_texts = [orjson.loads(x)["text"] for x in (split / "heldout" / "web.jsonl").read_bytes().splitlines()]
    assert len(train_texts) + len(heldout_texts) == len(docs)
    assert not {ablate.doc_hash(t, "test") for t in train_texts} & recorded
    assert not set(train_texts) & set(heldout_texts)  # exact copies fall on one side

    # What each arm trained on (the documents its pack stage packed) holds no held-out text.
    for arm, folder in (("raw", out / "ablation" / "raw" / "01-pack"), ("clean", out / "02-pack")):
        import pyarrow.parquet as pq

        table = pq.read_table(folder / "data")
        assert table.num_rows and not set(table.column("text").to_pylist()) & set(heldout_texts)
        assert results["leak_check"][arm] == {"documents_checked": table.num_rows, "heldout_found": 0}
    assert ablate.leaked_hashes(out / "02-pack" / "data", recorded) == (results["leak_check"]["clean"]
                                                                         ["documents_checked"], 0)
    # The check does catch a held-out hash in a training set.
    one = json.loads(pq.read_table(out / "02-pack" / "data").column("meta")[0].as_py())[ablate.HASH_FIELD]
    assert ablate.leaked_hashes(out / "02-pack" / "data", recorded | {one})[1] >= 1

    # Equal budgets, a comparison row per arm, and the report shows it.
    rows = {r["arm"]: r for r in ablate.comparison_rows(results)}
    assert set(rows) == {"raw", "clean"}
    assert rows["raw"]["documents"] > rows["clean"]["documents"]  # cleaning dropped the noise
    for r in rows.values():
        assert r["trained_tokens"] >= 1500 and r["ppl_clean"] > 1 and r["bpb_clean"] > 0
    assert rows["raw"]["trained_tokens"] == rows["clean"]["trained_tokens"]
    from pipeline.report import write_report

    report = write_report(out)
    assert report.model["ablation"]["rows"] and "ablation" not in report.model["notes"]
    page = report.html.read_text()
    assert "Ablation: does this cleaning make a better model?" in page and "training loss per arm" in page

    # A rerun skips the finished training.
    messages = []
    ablate.run_ablation(path, ablate.AblateRequest(echo=messages.append))
    assert any(m.startswith("  skip training raw") for m in messages)


def test_config_errors_name_the_key(ablation_config, tmp_path):
    _, config, _ = ablation_config
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "budget_tokns": 5}))
    with pytest.raises(ConfigError, match="budget_tokns: unknown key"):
        ablate.load_ablate_config(bad)
    bad.write_text(yaml.safe_dump({**config, "arms": ["raw", "curriculum"]}))
    with pytest.raises(ConfigError, match="curriculum needs a difficulty_bucket"):
        ablate.run_ablation(bad)
    bad.write_text(yaml.safe_dump({**config, "train": {**config["train"], "train": {"lr": -1}}}))
    with pytest.raises(ConfigError, match=r"train\.train\.lr"):
        ablate.run_ablation(bad)
    bad.write_text(yaml.safe_dump({**config, "tokenizer": {}}))
    with pytest.raises(ConfigError, match="exactly one of path and train"):
        ablate.load_ablate_config(bad)
