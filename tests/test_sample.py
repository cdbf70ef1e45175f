"""The demo corpus generator (`kiln sample`): source prose, determinism, planted noise against
its ground truth, held-out splits, and what kiln's own readers make of the raw files."""

from __future__ import annotations

import collections
import gzip
import ipaddress
import itertools
import json
import re
from pathlib import Path

import ftfy
import opencc
import orjson
import pyarrow.parquet as pq
import pytest

from common.errors import KilnError
from common.inputs import InputSpec
from common.readers import read_inputs
from pipeline import sample
from pipeline.cli import main
from pipeline.sample import (
    BOOKS,
    DEFAULT_RATES,
    FORUM,
    KINDS,
    NEWS,
    WEB,
    char_shingles,
    cn_id_check_digit,
    generate,
    luhn_valid,
    nfkc_fold,
    split_sentences,
)

DOCS = sample.DEFAULT_DOCS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    summary = generate(out, docs=DOCS, seed=0)
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"out": out, "summary": summary, "truth": truth, "raw": load_raw(out / "raw")}


def load_raw(raw: Path) -> dict[tuple[str, int], bytes | str]:
    """Every record of the raw files by (file, 1-based line or row): bytes for line files,
    the text for parquet rows."""
    records: dict[tuple[str, int], bytes | str] = {}
    for name, data in ((WEB, gzip.decompress((raw / WEB).read_bytes())),
                       (NEWS, (raw / NEWS).read_bytes()), (FORUM, (raw / FORUM).read_bytes())):
        assert data.endswith(b"\n")
        for number, line in enumerate(data[:-1].split(b"\n"), 1):
            records[(name, number)] = line
    for number, text in enumerate(pq.read_table(raw / BOOKS).column("text").to_pylist(), 1):
        records[(BOOKS, number)] = text
    return records


def position(entry: dict) -> tuple[str, int]:
    return entry["file"], entry["row"] if entry["file"] == BOOKS else entry["line"]


def text_of(corpus: dict, entry: dict) -> str:
    """The document text of a well-formed record."""
    record = corpus["raw"][position(entry)]
    if entry["file"] == BOOKS:
        return record
    if entry["file"] == FORUM:
        return record.decode("utf-8")
    obj = json.loads(record)
    return obj["text" if entry["file"] == WEB else "content"]


def well_formed(entry: dict) -> bool:
    return not set(entry["kinds"]) & {"malformed_json", "invalid_utf8", "empty_text", "missing_text"}


# -- source prose --------------------------------------------------------------------------------


def test_source_prose_is_well_formed() -> None:
    sentences: list[str] = []
    for name, lang in (("zh.txt", "zh"), ("en.txt", "en")):
        rows = sample._read_tsv(sample.SOURCE_DIR / name)
        topics = collections.Counter(topic for topic, _ in rows)
        assert 150 <= len(rows) <= 200 and len(topics) == 10 and min(topics.values()) >= 12
        for _, text in rows:
            if lang == "zh":
                assert 120 <= len(re.findall(r"[\u4e00-\u9fff]", text)) <= 350, text[:20]
                assert not re.search(r"[,;:?!()]", text), f"half-width punctuation in {text[:20]}"
            else:
                assert 70 <= len(text.split()) <= 160, text[:40]
            sentences += split_sentences(text, lang)
    hant = sample._read_tsv(sample.SOURCE_DIR / "zh_hant.txt")
    assert 10 <= len(hant) <= 20
    converted = opencc.OpenCC("t2s")
    assert all(converted.convert(text) != text for _, text in hant)  # really traditional
    sentences += [s for _, text in hant for s in split_sentences(text, "zh-Hant")]
    repeated = [s for s, n in collections.Counter(sentences).items() if n > 1]
    assert not repeated, repeated[:3]


def test_sentence_splitting() -> None:
    assert split_sentences("他说：“好。”然后走了。为什么？因为下雨！", "zh") == ["他说：“好。”", "然后走了。", "为什么？", "因为下雨！"]
    assert split_sentences("It rose 3.5 meters. Then it fell! Why? \"Wind.\"", "en") == [
        "It rose 3.5 meters.", "Then it fell!", "Why?", '"Wind."']


# -- determinism and configuration -------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", docs=400, seed=7)
    generate(tmp_path / "b", docs=400, seed=7)
    generate(tmp_path / "c", docs=400, seed=8)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 9
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "truth.jsonl").read_bytes() != (tmp_path / "c" / "truth.jsonl").read_bytes()


def test_rates_are_configurable(tmp_path: Path) -> None:
    generate(tmp_path, docs=400, seed=1, rates={"near_dup": 0.1, "pii": 0})
    kinds = collections.Counter(k for line in (tmp_path / "truth.jsonl").open() for k in json.loads(line)["kinds"])
    assert kinds["near_dup"] == 40 and kinds["pii"] == 0
    with pytest.raises(KilnError, match="unknown noise kind"):
        generate(tmp_path, docs=400, rates={"typo": 0.1})
    with pytest.raises(KilnError, match="sum to"):
        generate(tmp_path, docs=400, rates={"garbage": 0.6})
    with pytest.raises(KilnError, match="at least"):
        generate(tmp_path, docs=10)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sample", str(tmp_path / "out"), "--docs", "300", "--seed", "3", "--rate", "short=0.02"]) == 0
    assert "300 raw records" in capsys.readouterr().out
    assert sum(1 for _ in (tmp_path / "out" / "truth.jsonl").open()) == 300
    assert main(["sample", str(tmp_path / "out"), "--rate", "short"]) == 2
    assert "expected KIND=SHARE" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "out"), "--source", str(tmp_path / "none")]) == 2
    assert "demo source file is missing" in capsys.readouterr().err


# -- truth against the files -------------------------------------------------------------------


def test_truth_covers_every_record(corpus: dict) -> None:
    truth = corpus["truth"]
    assert len(truth) == DOCS == len(corpus["raw"])
    assert sorted(position(e) for e in truth) == sorted(corpus["raw"])
    assert len({e["pipeline_id"] for e in truth}) == DOCS
    for entry in truth:
        if entry["file"] in (WEB, NEWS) and well_formed(entry):
            record = json.loads(corpus["raw"][position(entry)])
            assert record["id" if entry["file"] == WEB else "doc_id"] == entry["id"]
    for name in (WEB, NEWS, FORUM, BOOKS):
        share = sum(e["file"] == name for e in truth) / DOCS
        assert share > 0.1, name


def test_every_kind_at_its_rate(corpus: dict) -> None:
    kinds = collections.Counter(k for e in corpus["truth"] for k in e["kinds"])
    for name, kind in KINDS.items():
        if kind.count:
            assert kinds[name] == kind.count, name
        else:
            expected = DEFAULT_RATES[name] * DOCS
            assert abs(kinds[name] - expected) <= max(2, 0.1 * expected), (name, kinds[name], expected)
    noisy = sum(1 for e in corpus["truth"] if e["kinds"]) / DOCS
    assert 0.35 <= noisy <= 0.45
    langs = collections.Counter(e["lang"] for e in corpus["truth"])
    chinese = langs["zh"] + langs["zh-Hant"] + langs["mixed"]
    assert 0.45 <= chinese / (chinese + langs["en"]) <= 0.55
    garbage = collections.Counter(e["details"]["variant"] for e in corpus["truth"] if e["kinds"] == ["garbage"])
    assert set(garbage) == set(sample.GARBAGE_VARIANTS)
    assert {e["lang"] for e in corpus["truth"] if e["kinds"] == ["other_lang"]} == {"es", "fr", "de", "ru"}


def test_kiln_readers_see_what_truth_says(corpus: dict) -> None:
    raw = corpus["out"] / "raw"
    specs = [InputSpec(path=str(raw / WEB), id_field="id"),
             InputSpec(path=str(raw / NEWS), id_field="doc_id", text_field="content"),
             InputSpec(path=str(raw / FORUM)),
             InputSpec(path=str(raw / BOOKS), id_field="id")]
    rows = {r["id"]: r for table in read_inputs(specs) for r in table.to_pylist()}
    assert set(rows) == {e["pipeline_id"] for e in corpus["truth"]}
    for entry in corpus["truth"]:
        row = rows[entry["pipeline_id"]]
        if well_formed(entry):
            assert row["reject_op"] is None, entry
            assert row["text"] == text_of(corpus, entry)
        else:
            assert row["reject_reason"] == entry["kinds"][0], entry


# -- the noise is what truth says it is ---------------------------------------------------------


def test_malformed_records_are_malformed(corpus: dict) -> None:
    seen = collections.Counter()
    for entry in corpus["truth"]:
        if well_formed(entry):
            continue
        record = corpus["raw"][position(entry)]
        kind = entry["kinds"][0]
        seen[(kind, entry["file"])] += 1
        if kind == "invalid_utf8":
            with pytest.raises(UnicodeDecodeError):
                record.decode("utf-8")
        elif kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(record)
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(record)
        elif kind == "empty_text":
            assert json.loads(record)["text"] == ""
        else:
            assert "text" not in json.loads(record) and json.loads(record)["body"]
    assert seen == {("malformed_json", WEB): 3, ("invalid_utf8", WEB): 1, ("invalid_utf8", FORUM): 1,
                    ("empty_text", WEB): 1, ("missing_text", WEB): 1}


def test_pii_values_are_valid(corpus: dict) -> None:
    types = collections.Counter()
    for entry in corpus["truth"]:
        if entry["kinds"] != ["pii"]:
            continue
        text = text_of(corpus, entry)
        for item in entry["details"]["pii"]:
            kind, value = item["type"], item["value"]
            types[kind] += 1
            assert value in text
            if kind == "cn_id":
                assert re.fullmatch(r"\d{17}[\dX]", value) and cn_id_check_digit(value[:17]) == value[17]
            elif kind == "bank_card":
                assert re.fullmatch(r"\d{16,19}", value) and luhn_valid(value)
            elif kind == "cn_mobile":
                assert re.fullmatch(r"1[3-9]\d{9}", value)
            elif kind == "ipv4":
                assert ipaddress.ip_address(value).version == 4
            elif kind == "ipv6":
                assert ipaddress.ip_address(value).version == 6
            elif kind == "email":
                assert re.fullmatch(r"[\w.]+@[\w.]+\.\w+", value)
            else:
                assert re.search(r"\d{3,}", value)
    assert set(types) == {"email", "cn_mobile", "cn_landline", "intl_phone", "cn_id", "ipv4", "ipv6", "bank_card"}
    # the checks themselves reject bad numbers
    assert not luhn_valid("6222021234567890123") or not luhn_valid("6222021234567890124")
    assert cn_id_check_digit("11010519491231002") == "X"


def test_planted_noise_is_present(corpus: dict) -> None:
    converter = opencc.OpenCC("t2s")
    for entry in corpus["truth"]:
        if not well_formed(entry) or not entry["kinds"]:
            continue
        kind, details, text = entry["kinds"][0], entry["details"], text_of(corpus, entry)
        if kind == "mojibake":
            assert ftfy.fix_encoding(text) == details["expected_text"] != text
        elif kind == "normalize":
            assert nfkc_fold(text) == details["expected_text"] != text
            assert re.search("[\u200b\u200c\u200d\u2060\ufeff]", text)
        elif kind == "boilerplate":
            assert all(line in text.split("\n") for line in details["added_lines"])
        elif kind == "spam_lines":
            assert all(ad in text for ad in details["added"])
        elif kind == "html":
            assert re.search(r"</?(p|div)\b", text)
        elif kind == "traditional":
            assert converter.convert(text) != text
        elif kind == "mixed_lang":
            assert re.search(r"[\u4e00-\u9fff]", text) and re.search(r"[A-Za-z]{4,} [a-z]+ [a-z]+", text)
        elif kind == "short":
            assert 0 < len(text) <= 24
        elif kind == "huge":
            assert len(text.encode("utf-8")) >= 200_000
            assert len(set(text.split("\n"))) < 10
    forum = [line for (name, _), line in corpus["raw"].items() if name == FORUM]
    assert all(line.strip() for line in forum)


def test_duplicates_are_linked_and_measured(corpus: dict) -> None:
    by_id = {e["pipeline_id"]: e for e in corpus["truth"]}
    exact = [e for e in corpus["truth"] if e["kinds"] == ["exact_dup"]]
    near = [e for e in corpus["truth"] if e["kinds"] == ["near_dup"]]
    moved = 0
    for e in exact:
        original = by_id[e["dup_of"]]
        assert original["kinds"] == [] and e["cluster"] == original["pipeline_id"] == original["cluster"]
        assert text_of(corpus, e) == text_of(corpus, original)
        moved += e["file"] != original["file"]
    assert moved >= 0.4 * len(exact)
    chains = 0
    for e in near:
        parent = by_id[e["dup_of"]]
        a, b = text_of(corpus, e), text_of(corpus, parent)
        assert a != b and 0.05 <= e["details"]["edit_ratio"] <= 0.15
        x, y = char_shingles(a), char_shingles(b)
        assert round(len(x & y) / len(x | y), 3) == e["details"]["jaccard_to_dup_of"]
        assert e["cluster"] == (parent["cluster"] if parent["kinds"] else parent["pipeline_id"])
        chains += parent["kinds"] == ["near_dup"]
    assert chains >= 0.1 * len(near)


def test_no_unlinked_near_duplicates(corpus: dict) -> None:
    """Documents built from source sentences that truth does not link are far apart: no pair
    reaches a character 5-gram Jaccard of 0.7. Candidates are pairs whose shared source
    sentences cover most of the longer document."""
    docs = [(e, text_of(corpus, e)) for e in corpus["truth"]
            if e["kinds"] in ([], ["exact_dup"], ["near_dup"])]
    docs_of_sentence = collections.defaultdict(set)
    for i, (entry, text) in enumerate(docs):
        for line in text.split("\n"):
            for s in split_sentences(line, entry["lang"]):
                docs_of_sentence[s].add(i)
    shared = collections.Counter()
    for s, members in docs_of_sentence.items():
        for pair in itertools.combinations(sorted(members), 2):
            shared[pair] += len(s)
    worst = 0.0
    for (a, b), chars in shared.items():
        (ea, ta), (eb, tb) = docs[a], docs[b]
        if chars < 0.6 * max(len(ta), len(tb)):
            continue
        if (ea["cluster"] or ea["pipeline_id"]) == (eb["cluster"] or eb["pipeline_id"]):
            continue
        x, y = char_shingles(ta), char_shingles(tb)
        worst = max(worst, len(x & y) / len(x | y))
    assert worst < 0.7


def test_held_out_text_never_in_raw(corpus: dict) -> None:
    out = corpus["out"]
    raw_text = "\n".join(r if isinstance(r, str) else r.decode("utf-8", "replace") for r in corpus["raw"].values())
    for lang in ("zh", "en"):
        reference = (out / "reference" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        heldout = (out / "heldout" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        assert len(reference) == corpus["summary"].reference[lang] >= 35
        assert len(heldout) == corpus["summary"].heldout[lang] >= 15
        assert not set(reference) & set(heldout)
        for paragraph in reference + heldout:
            for sentence in split_sentences(paragraph, lang):
                assert sentence not in raw_text, sentence
