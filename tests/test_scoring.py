"""Scoring operators: text preparation, KenLM training and perplexity, the fastText quality
classifier, transformer perplexity; one end-to-end run of score -> select -> bucket.

KenLM tests train small models on real reference text (../shared/data) with the lmplz that
`make lmplz` builds; they skip, saying so, where either is missing.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.base import run_operators, split_rejected
from operators.scoring import (
    PREPARATION,
    LMPerplexity,
    ModelError,
    Perplexity,
    QualityClassifier,
    card_path,
    prepare_classifier_text,
    prepare_paragraphs,
    prepare_sentences,
)
from trainer.evaluate import length_batches

# --------------------------------------------------------------------------- helpers


def auc(good: list[float], bad: list[float]) -> float:
    """Probability that a good document scores lower (better) than a bad one."""
    good_a, bad_a = np.asarray(good, dtype=float), np.asarray(bad, dtype=float)
    return float(np.mean([(g < bad_a).mean() + 0.5 * (g == bad_a).mean() for g in good_a]))


def docs_table(texts: list[str], lang: str | list[str | None] | None = None) -> pa.Table:
    langs = lang if isinstance(lang, list) else [lang] * len(texts)
    return pa.table({"id": [f"d{i}" for i in range(len(texts))], "text": texts,
                     "source": ["test"] * len(texts), "lang": pa.array(langs, pa.string())})


def shuffled_characters(text: str, rng: random.Random) -> str:
    chars = list(text)
    rng.shuffle(chars)
    return "".join(chars)


def zh_spam(rng: random.Random, n: int) -> list[str]:
    """Ad and keyword-stuffing texts of the kind web crawls are full of."""
    pieces = ["加微信", "免费领取", "点击链接", "低价出售", "代开发票", "招聘兼职", "日赚三百", "特价优惠",
              "联系QQ", "全网最低", "包邮到家", "限时抢购", "刷单返利", "高清无码", "立即注册"]
    out = []
    for _ in range(n):
        words = [rng.choice(pieces) for _ in range(rng.randint(8, 20))]
        phone = "".join(rng.choice(string.digits) for _ in range(11))
        out.append("！！".join(words) + f" 电话{phone} ★★★ www.{rng.randint(100, 999)}abc.com")
    return out


def en_spam(rng: random.Random, n: int) -> list[str]:
    pieces = ["BUY NOW", "cheap pills", "click here", "free $$$", "100% guaranteed", "limited offer",
              "best price", "casino bonus", "WIN BIG", "viagra", "replica watches", "work from home",
              "no prescription", "act now", "lose weight fast"]
    out = []
    for _ in range(n):
        words = [rng.choice(pieces) for _ in range(rng.randint(8, 20))]
        out.append(" !!! ".join(words) + f" >>> http://spam{rng.randint(100, 999)}.biz/?ref={rng.randint(1, 10**6)}")
    return out


def cmrc_paragraphs(shared_data: Path) -> list[str]:
    folder = shared_data / "zh_cmrc2018_wiki" / "data"
    texts = []
    for name in ("cmrc2018_dev.json", "cmrc2018_trial.json"):
        texts += [d["context_text"] for d in json.loads((folder / name).read_text())]
    return list(dict.fromkeys(texts))


def bbc_articles(shared_data: Path) -> list[str]:
    folder = shared_data / "en_bbc_news" / "bbc"
    return [p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.glob("*/*.txt"))]


def weibo_posts(shared_data: Path) -> list[str]:
    path = shared_data / "zh_uer_corpora" / "datasets" / "smp2020-ewect" / "usual" / "train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return list(dict.fromkeys(line.split("\t", 1)[1].strip() for line in lines if "\t" in line))


def write_lines(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- preparation


def test_prepare_chinese_is_characters_with_sentences_split():
    assert prepare_sentences("北京是中国的首都。上海很大！") == ["北 京 是 中 国 的 首 都 。", "上 海 很 大 ！"]


def test_prepare_english_is_lowercase_words_digits_folded():
    assert prepare_sentences("The GDP grew 3.5% in 2019. Next one") == [
        "the gdp grew 0 . 0 % in 0000 .", "next one"]


def test_prepare_mixed_and_full_width_text():
    # NFKC folds full-width Latin letters and digits; Latin words stay whole inside Chinese.
    assert prepare_sentences("我用ＧＰＴ－４写了Python代码") == ["我 用 gpt - 0 写 了 python 代 码"]


def test_prepare_quotes_stay_with_their_sentence_and_lines_split():
    assert prepare_sentences("他说：“好的。”然后走了\n第二段") == ["他 说 ： “ 好 的 。 ”", "然 后 走 了", "第 二 段"]
    assert prepare_paragraphs("一。二。\n\n三") == [["一 。", "二 。"], ["三"]]


def test_prepare_empty_and_invisible_only_text():
    first = prepare_sentences("北京是中国的首都。上海很大！")
    first.append("changed by a caller")  # the cache hands out copies
    assert prepare_sentences("北京是中国的首都。上海很大！") == ["北 京 是 中 国 的 首 都 。", "上 海 很 大 ！"]
    assert prepare_sentences("") == []
    assert prepare_sentences(" \u200b\n\t ") == []
    assert prepare_classifier_text("a b c d", max_tokens=2) == "a b"


# --------------------------------------------------------------------------- KenLM


@pytest.fixture(scope="session")
def lmplz_ready():
    from common.errors import KilnError
    from pipeline.lm import find_kenlm_tool

    try:
        find_kenlm_tool("lmplz")
        find_kenlm_tool("build_binary")
    except KilnError as e:
        pytest.skip(f"KenLM training unavailable: {e}")


@pytest.fixture(scope="session")
def zh_model(tmp_path_factory, shared_data, lmplz_ready):
    """An order-4 character model trained on 900 Chinese Wikipedia paragraphs; the rest
    of the paragraphs are held out."""
    from pipeline.lm import LMTrainRequest, train_kenlm

    paragraphs = cmrc_paragraphs(shared_data)
    folder = tmp_path_factory.mktemp("zh_lm")
    corpus = write_lines(folder / "zh.txt", paragraphs[:900])
    model = folder / "zh.binary"
    train_kenlm(LMTrainRequest(lang="zh", corpus=[str(corpus)], output=model, order=4, memory="200M"),
                echo=lambda _: None)
    return model, paragraphs[900:]


@pytest.fixture(scope="session")
def en_model(tmp_path_factory, shared_data, lmplz_ready):
    """An order-4 word model trained on 1,800 BBC articles; paragraphs of the other articles
    (not byte-identical to a training article's) are held out."""
    from pipeline.lm import LMTrainRequest, train_kenlm

    articles = bbc_articles(shared_data)
    rng = random.Random(0)
    rng.shuffle(articles)
    train, held = articles[:1800], articles[1800:]
    seen = set(train)
    folder = tmp_path_factory.mktemp("en_lm")
    corpus = folder / "en.jsonl"
    corpus.write_text("".join(json.dumps({"text": a}) + "\n" for a in train))
    model = folder / "en.binary"
    train_kenlm(LMTrainRequest(lang="en", corpus=[str(corpus)], output=model, order=4, memory="200M"),
                echo=lambda _: None)
    paragraphs = [p.strip() for a in held if a not in seen for p in a.split("\n\n")[1:] if len(p.strip()) > 150]
    return model, paragraphs[:200]


def test_lm_card_records_what_the_scorer_checks(zh_model):
    model, _ = zh_model
    card = json.loads(card_path(model).read_text())
    assert card["kind"] == "kenlm" and card["language"] == "zh" and card["order"] == 4
    assert card["preparation"] == PREPARATION
    assert card["corpus"]["documents"] == 900 and card["corpus"]["tokens"] > 100_000
    assert len(card["corpus"]["prepared_sha256"]) == 64 and len(card["corpus"]["files"][0]["sha256"]) == 64
    assert card["lmplz"]["version"].startswith("kenlm")
    assert card["model"]["bytes"] == model.stat().st_size


def test_zh_model_ranks_wiki_above_shuffled_and_spam(zh_model):
    model, held = zh_model
    rng = random.Random(1)
    shuffled = [shuffled_characters(t, rng) for t in held]
    spam = zh_spam(rng, len(held))
    table = docs_table(held + shuffled + spam, "zh")
    out = run_operators([Perplexity({"models": {"zh": str(model)}})], table)
    ppl = out.column("stat.ppl").to_pylist()
    n = len(held)
    good, bad_shuffled, bad_spam = ppl[:n], ppl[n:2 * n], ppl[2 * n:]
    assert auc(good, bad_shuffled) >= 0.95
    assert auc(good, bad_spam) >= 0.95


def test_en_model_ranks_news_above_shuffled_and_spam(en_model):
    model, held = en_model
    assert len(held) >= 100
    rng = random.Random(2)
    shuffled = [shuffled_characters(t, rng) for t in held]
    spam = en_spam(rng, len(held))
    out = run_operators([Perplexity({"models": {"en": str(model)}})], docs_table(held + shuffled + spam, "en"))
    ppl = out.column("stat.ppl").to_pylist()
    n = len(held)
    assert auc(ppl[:n], ppl[n:2 * n]) >= 0.95
    assert auc(ppl[:n], ppl[2 * n:]) >= 0.95


def test_perplexity_is_ccnet_document_perplexity(zh_model):
    import kenlm

    model, held = zh_model
    text = held[0]
    out = run_operators([Perplexity({"models": {"zh": str(model)}, "paragraphs": True})], docs_table([text], "zh"))
    lm = kenlm.Model(str(model))
    sentences = prepare_sentences(text)
    log10 = sum(lm.score(s, bos=True, eos=True) for s in sentences)
    tokens = sum(len(s.split()) + 1 for s in sentences)
    assert out.column("stat.ppl")[0].as_py() == pytest.approx(10 ** (-log10 / tokens))
    assert out.column("stat.ppl_paragraphs")[0].as_py() == [pytest.approx(10 ** (-log10 / tokens))]


def test_documents_without_a_model_are_kept_or_rejected(zh_model):
    model, held = zh_model
    table = docs_table([held[0], "An English sentence.", "无语言"], ["zh", "en", None])
    kept, rejected = split_rejected(run_operators([Perplexity({"models": {"zh": str(model)}})], table))
    assert kept.num_rows == 3 and kept.column("stat.ppl").null_count == 2
    op = Perplexity({"models": {"zh": str(model)}, "missing_lang": "reject", "default_lang": "zh"})
    kept, rejected = split_rejected(run_operators([op], table))
    assert kept.column("id").to_pylist() == ["d0", "d2"]
    assert rejected.column("reject_reason").to_pylist() == ["no_lm_for_lang"]
    assert rejected.column("reject_op").to_pylist() == ["perplexity"]


def test_max_ppl_rejects_only_above_the_cap(zh_model):
    model, held = zh_model
    rng = random.Random(5)
    table = docs_table([held[0], shuffled_characters(held[0], rng), "English."], ["zh", "zh", "en"])
    scores = run_operators([Perplexity({"models": {"zh": str(model)}})], table).column("stat.ppl").to_pylist()
    cap = (scores[0] + scores[1]) / 2
    op = Perplexity({"models": {"zh": str(model)}, "max_ppl": cap})
    kept, rejected = split_rejected(run_operators([op], table))
    assert kept.column("id").to_pylist() == ["d0", "d2"]  # no model for en: kept, unscored
    assert rejected.column("reject_reason").to_pylist() == ["perplexity"]


def test_perplexity_refuses_models_it_cannot_trust(zh_model, tmp_path):
    model, _ = zh_model
    with pytest.raises(ModelError, match="kiln lm train"):
        Perplexity({"models": {"zh": str(tmp_path / "missing.binary")}}).setup()
    # A model without a card (someone else's KenLM model): preparation unknown.
    orphan = tmp_path / "orphan.binary"
    orphan.write_bytes(model.read_bytes())
    with pytest.raises(ModelError, match="no card"):
        Perplexity({"models": {"zh": str(orphan)}}).setup()
    card = json.loads(card_path(model).read_text())
    card_path(orphan).write_text(json.dumps({**card, "preparation": "jieba-words"}))
    with pytest.raises(ModelError, match="does not implement"):
        Perplexity({"models": {"zh": str(orphan)}}).setup()
    with pytest.raises(ModelError, match="is for 'zh'"):
        Perplexity({"models": {"en": str(model)}}).setup()


def test_lm_train_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from pipeline.cli import main

    corpus = write_lines(tmp_path / "c.txt", ["一个句子。"] * 20)
    monkeypatch.setenv("KILN_LMPLZ", str(tmp_path / "nowhere" / "lmplz"))
    assert main(["lm", "train", "--lang", "zh", "--corpus", str(corpus), "--output", str(tmp_path / "m.binary")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "KILN_LMPLZ" in err
    monkeypatch.delenv("KILN_LMPLZ")
    assert main(["lm", "train", "--lang", "zh", "--corpus", str(tmp_path / "absent.txt"),
                 "--output", str(tmp_path / "m.binary")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_lm_train_command_on_a_tiny_corpus(tmp_path, lmplz_ready, capsys):
    """A tiny corpus needs lmplz's discount fallback, which kiln passes; the card says so."""
    from pipeline.cli import main

    corpus = write_lines(tmp_path / "tiny.txt", ["今天天气很好。", "我们去公园散步。", "公园里有很多人。"] * 4)
    output = tmp_path / "lm" / "tiny.binary"
    assert main(["lm", "train", "--lang", "zh", "--corpus", str(corpus), "--order", "3",
                 "--output", str(output), "--memory", "50M"]) == 0
    card = json.loads(card_path(output).read_text())
    assert card["lmplz"]["fallback_discount_orders"], "a 12-line corpus needs fallback discounts"
    assert card["corpus"]["sentences"] == 12
    out = run_operators([Perplexity({"models": {"zh": str(output)}})], docs_table(["今天天气很好。", "好很气天今。"], "zh"))
    good, bad = out.column("stat.ppl").to_pylist()
    assert good < bad


# --------------------------------------------------------------------------- fastText


def test_quality_classifier_separates_wiki_from_weibo(shared_data, tmp_path):
    from pipeline.lm import ClassifierTrainRequest, train_classifier

    wiki = cmrc_paragraphs(shared_data)
    weibo = weibo_posts(shared_data)
    rng = random.Random(3)
    rng.shuffle(weibo)
    positive = write_lines(tmp_path / "wiki.txt", wiki[:900])
    negative = write_lines(tmp_path / "weibo.txt", weibo[:3000])
    model = tmp_path / "quality.ftz"
    # A smaller quantization cutoff than the default keeps the test quick.
    card = train_classifier(ClassifierTrainRequest(positive=[str(positive)], negative=[str(negative)], output=model,
                                                   cutoff=20_000), echo=lambda _: None)
    assert model.stat().st_size < 5 << 20  # quantized
    assert card["training"]["positive"] == card["training"]["negative"]  # balanced by default
    assert card["validation"]["f1"] > 0.8
    held_wiki, held_weibo = wiki[900:], weibo[3000:3000 + len(wiki[900:])]
    op = QualityClassifier({"model": str(model), "threshold": 0.5})
    out = run_operators([op], docs_table(held_wiki + held_weibo, "zh"))
    quality = np.asarray(out.column("stat.quality").to_pylist())
    n = len(held_wiki)
    # Higher quality is better, so the AUC of the negated scores ranks wiki first.
    assert auc(list(-quality[:n]), list(-quality[n:])) >= 0.9
    kept, rejected = split_rejected(out)
    kept_wiki = sum(i < n for i in (int(x[1:]) for x in kept.column("id").to_pylist()))
    assert kept_wiki / n >= 0.8
    assert set(rejected.column("reject_reason").to_pylist()) == {"low_quality"}
    assert rejected.num_rows >= 0.8 * len(held_weibo)


def test_quality_classifier_needs_its_card(tmp_path):
    with pytest.raises(ModelError, match="kiln classifier train"):
        QualityClassifier({"model": str(tmp_path / "none.bin")}).setup()


# --------------------------------------------------------------------------- transformer LM


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A 2-layer LLaMA with a byte-level BPE tokenizer trained here, fitted briefly on one
    repeated text so that its perplexity means something; nothing comes from a hub."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    # One thread: tiny matrices gain nothing from more, and on a busy machine threads
    # spinning against each other make 60 steps take a minute instead of two seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    text = ("the cat sat on the mat and the dog sat on the log. " * 8).strip()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator([text, "zq xv jk wq " * 10], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<pad>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config)
    ids = torch.tensor([tokenizer(text)["input_ids"][:64]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    yield folder
    torch.set_num_threads(threads)


def test_lm_perplexity_batched_equals_one_by_one(tiny_causal_lm):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["the cat sat on the mat", "the dog sat on the log and the cat sat on the mat",
             "mat the on sat cat the", "zq", "", "the cat"]
    op = LMPerplexity({"model": str(tiny_causal_lm), "batch_tokens": 24, "max_tokens": 12})
    out = run_operators([op], docs_table(texts))
    batched = out.column("stat.lm_ppl").to_pylist()
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    for text, got in zip(texts, batched):
        ids = tokenizer(text, truncation=True, max_length=12)["input_ids"]
        if len(ids) < 2:
            assert got is None
            continue
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
        assert got == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_lm_perplexity_ranks_fluent_text_first(tiny_causal_lm):
    op = LMPerplexity({"model": str(tiny_causal_lm), "max_ppl": 1e9})
    out = run_operators([op], docs_table(["the cat sat on the mat and the dog sat on the log.",
                                          "log the dog mat on and sat cat the the on sat."]))
    fluent, scrambled = out.column("stat.lm_ppl").to_pylist()
    assert fluent < scrambled


def test_lm_perplexity_model_folder_must_exist(tmp_path):
    with pytest.raises(ModelError, match=r"config\.json"):
        LMPerplexity({"model": str(tmp_path)}).setup()


def test_length_batches_respect_the_token_budget():
    lengths = [5, 100, 7, 98, 3, 50, 51]
    batches = length_batches(lengths, 200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 200 or len(batch) == 1
    assert [1, 3] in batches  # the two longest share a batch


# --------------------------------------------------------------------------- end to end


@pytest.mark.ray
def test_score_select_and_bucket_pipeline(run_config, zh_model, tmp_path):
    """Score real paragraphs with the KenLM model, keep the best 60% per language, bucket
    the survivors in Colossal mode; every document is accounted for."""
    model, held = zh_model
    rng = random.Random(4)
    docs = [{"id": f"w{i}", "text": t} for i, t in enumerate(held[:60])]
    docs += [{"id": f"s{i}", "text": shuffled_characters(t, rng)} for i, t in enumerate(held[60:100])]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    news = tmp_path / "news.jsonl"
    news.write_text("".join(json.dumps({"id": f"n{i}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(held[100:140])))
    stats, run_dir = run_config({
        "inputs": [{"path": str(path), "lang": "zh", "source": "web", "id_field": "id"},
                   {"path": str(news), "lang": "zh", "source": "news", "id_field": "id"}],
        "stages": [{"name": "score", "ops": [{"perplexity": {"models": {"zh": str(model)}}},
                                             {"perplexity_select": {"keep_fraction": 0.6}},
                                             {"difficulty_bucket": {"mode": "colossal", "num_buckets": 3}}]}]})
    (score,) = stats["stages"]
    assert score["docs_in"] == 140 and score["docs_out"] == 84
    assert score["rejected"] == {"perplexity_select/perplexity": 56}
    cut = score["extra"]["perplexity_select"]["cutoffs"]["zh"]
    assert score["extra"]["perplexity_select"]["counts"]["zh"] == {"docs": 140, "head": 42, "middle": 42, "tail": 56}
    rejected = pq.read_table(next((run_dir / "01-score" / "rejected").glob("*.parquet"))).to_pylist()
    # Every shuffled document falls in the tail.
    assert {r["id"] for r in rejected} >= {f"web:s{i}" for i in range(40)}
    assert all(r["stat.ppl"] > cut["keep_below"] for r in rejected)
    kept = [r for f in (run_dir / "01-score" / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert len(kept) == 84 and all(r["bucket"] in (0, 1, 2) for r in kept)
    assert all(r["stat.ppl_label"] in ("head", "middle") for r in kept)
    buckets = score["extra"]["difficulty_bucket"]["buckets"]
    assert [b["docs"] for b in buckets] == [28, 28, 28]
    assert sum(b["chars"] for b in buckets) == sum(len(r["text"]) for r in kept)
    assert json.loads((run_dir / "01-score" / "curriculum.json").read_text())["order"] == [0, 1, 2]
    # The run's report shows the perplexity distribution with the cut lines, and the buckets.
    from pipeline.report import build_report

    report = build_report(run_dir)
    (zh,) = report["perplexity"]["per_lang"]
    assert zh["lang"] == "zh" and zh["cutoffs"] == {"keep_below": cut["keep_below"], "head_below": cut["head_below"]}
    assert [b["docs"] for b in report["buckets"][0]["buckets"]] == [28, 28, 28]
    by_source: dict[str, int] = {}
    for r in kept:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    for b in buckets:
        for source, n in by_source.items():
            assert abs(b["sources"].get(source, 0) - n * b["docs"] / 84) < 1
