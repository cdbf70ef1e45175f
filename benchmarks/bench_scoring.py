"""Scoring benchmark: KenLM perplexity and the fastText quality classifier, documents per
second per core, beside the preparation a user would otherwise pick.

Models are trained here, with the commands' own functions, on ../shared/data:
- KenLM zh: 900 Chinese Wikipedia paragraphs (CMRC 2018); scored on CLUECorpusSmall web
  and news documents and Weibo posts.
- KenLM en: 1,800 BBC articles; scored on BBC articles and Reuters bodies.
- fastText: Wikipedia paragraphs (positive) against Weibo posts (negative).

Configurations, each on the same documents, one process on one core (no Ray):
- `kiln`: the operator as a pipeline runs it (`run_operators`): kiln-v1 preparation
  (normalize, sentences, characters for Chinese, words for English) and scoring;
- `score only`: the same model on text prepared beforehand, i.e. the cost of KenLM or
  fastText alone, the floor for any preparation;
- the usual alternative preparation, with a model trained on it: jieba words (`rjieba`)
  for Chinese, SentencePiece unigram pieces (CCNet's choice) for English.
Beside speed, each configuration's ranking quality on held-out text: AUC of held-out
reference paragraphs against shuffled-character and spam texts (KenLM), and of held-out
Wikipedia paragraphs against Weibo posts (fastText).

Reported: documents per second of wall time and per CPU second of the process (docs/s per
core, steadier on a shared machine). Each configuration runs `--repeat` times; the run
with the least CPU time counts.

    make bench-scoring        # or: python benchmarks/bench_scoring.py --docs 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import string
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from operators.base import run_operators  # noqa: E402
from operators.scoring import (  # noqa: E402
    POSITIVE_LABEL,
    Perplexity,
    QualityClassifier,
    kenlm_perplexity,
    positive_probabilities,
    prepare_classifier_text,
    prepare_sentences,
    split_sentences,
)

# --------------------------------------------------------------------------- data


def cmrc_paragraphs() -> list[str]:
    folder = SHARED / "zh_cmrc2018_wiki" / "data"
    texts = []
    for name in ("cmrc2018_dev.json", "cmrc2018_trial.json"):
        texts += [d["context_text"] for d in json.loads((folder / name).read_text())]
    return list(dict.fromkeys(texts))


def weibo_posts() -> list[str]:
    path = SHARED / "zh_uer_corpora" / "datasets" / "smp2020-ewect" / "usual" / "train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return list(dict.fromkeys(line.split("\t", 1)[1].strip() for line in lines if "\t" in line))


def clue_docs() -> list[str]:
    path = SHARED / "zh_uer_corpora" / "corpora" / "CLUECorpusSmall_sampled.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def bbc_articles() -> list[str]:
    return [p.read_bytes().decode("utf-8", "replace") for p in sorted((SHARED / "en_bbc_news" / "bbc").glob("*/*.txt"))]


def reuters_bodies(limit: int) -> list[str]:
    bodies = []
    for path in sorted((SHARED / "en_reuters21578").glob("*.sgm")):
        raw = path.read_bytes().decode("latin-1")
        bodies += [html.unescape(b).strip() for b in re.findall(r"<BODY>(.*?)</BODY>", raw, re.S)]
        if len(bodies) >= limit:
            break
    return bodies[:limit]


def shuffled(text: str, rng: random.Random) -> str:
    chars = list(text)
    rng.shuffle(chars)
    return "".join(chars)


def spam(rng: random.Random, n: int, zh: bool) -> list[str]:
    pieces = (["加微信", "免费领取", "点击链接", "低价出售", "代开发票", "日赚三百", "特价优惠", "全网最低", "限时抢购"]
              if zh else ["BUY NOW", "cheap pills", "click here", "free $$$", "100% guaranteed", "casino bonus",
                          "WIN BIG", "replica watches", "act now"])
    sep = "！！" if zh else " !!! "
    return [sep.join(rng.choice(pieces) for _ in range(rng.randint(8, 20)))
            + " " + "".join(rng.choice(string.digits) for _ in range(11)) for _ in range(n)]


def auc(good, bad) -> float:
    good, bad = np.asarray(good, dtype=float), np.asarray(bad, dtype=float)
    return float(np.mean([(g < bad).mean() + 0.5 * (g == bad).mean() for g in good]))


# --------------------------------------------------------------------------- preparations


def jieba_sentences(text: str) -> list[str]:
    import rjieba

    return [" ".join(w for w in rjieba.cut(s) if w.strip()) for s in split_sentences(text)]


class PiecePreparation:
    """CCNet's preparation: SentencePiece unigram pieces of each (normalized) sentence."""

    def __init__(self, sentences: list[str], folder: Path, vocab_size: int = 8000) -> None:
        import sentencepiece as spm

        corpus = folder / "spm.txt"
        corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=vocab_size,
                                       model_type="unigram", character_coverage=1.0, minloglevel=2)
        self.sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))

    def __call__(self, text: str) -> list[str]:
        return [" ".join(self.sp.encode(s, out_type=str)) for s in split_sentences(text)]


def train_lm_on(prepare: Callable[[str], list[str]], texts: list[str], output: Path, order: int) -> Path:
    from pipeline.lm import estimate_kenlm

    prepared = output.with_suffix(".txt")
    prepared.write_text("".join(s + "\n" for t in texts for s in prepare(t)), encoding="utf-8")
    estimate_kenlm(prepared, output, order, memory="500M", echo=lambda _: None)
    return output


def train_kiln_lm(lang: str, texts: list[str], folder: Path, order: int) -> Path:
    from pipeline.lm import LMTrainRequest, train_kenlm

    corpus = folder / f"{lang}.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    output = folder / f"{lang}.binary"
    train_kenlm(LMTrainRequest(lang=lang, corpus=[str(corpus)], output=output, order=order, memory="500M"),
                echo=lambda _: None)
    return output


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the run with the least CPU time."""
    fn()  # warm-up: models loaded, caches filled
    best = None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        result = (time.perf_counter() - wall, time.process_time() - cpu)
        if best is None or result[1] < best[1]:
            best = result
    return best


def table_of(texts: list[str], lang: str) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": ["bench"] * len(texts),
                     "lang": [lang] * len(texts)})


def row(name: str, n: int, wall: float, cpu: float, quality: str) -> str:
    return f"| {name} | {n / wall:,.0f} | {n / cpu:,.0f} | {quality} |"


# --------------------------------------------------------------------------- benchmarks


def bench_kenlm(lang: str, docs: list[str], train: list[str], held: list[str], folder: Path, order: int,
                repeat: int) -> list[str]:
    import kenlm

    rng = random.Random(0)
    negatives = [shuffled(t, rng) for t in held] + spam(rng, len(held), zh=lang == "zh")
    kiln_model = train_kiln_lm(lang, train, folder, order)
    if lang == "zh":
        alt_name, alt_prepare = "rjieba words + KenLM", jieba_sentences
    else:
        alt_name = "SentencePiece pieces + KenLM (CCNet)"
        alt_prepare = PiecePreparation([s for t in train for s in split_sentences(t)], folder)
    alt_model = kenlm.Model(str(train_lm_on(alt_prepare, train, folder / f"{lang}_alt.binary", order)))
    op = Perplexity({"models": {lang: str(kiln_model)}})
    op.setup()
    model = op.models[lang]
    table = table_of(docs, lang)
    prepared = [prepare_sentences(t) for t in docs]
    chars = sum(map(len, docs)) / len(docs)

    def ppl(m, prepare, texts):
        return [kenlm_perplexity(m, prepare(t))[0] for t in texts]

    kiln_auc = auc(ppl(model, prepare_sentences, held), ppl(model, prepare_sentences, negatives))
    alt_auc = auc(ppl(alt_model, alt_prepare, held), ppl(alt_model, alt_prepare, negatives))
    lines = [f"\nKenLM {lang}, order {order}: {len(docs):,} documents, {chars:,.0f} characters on average",
             "", "| configuration | docs/s | docs/CPU-s | AUC held-out vs shuffled+spam |", "|---|---:|---:|---:|"]
    wall, cpu = timed(lambda: run_operators([op], table), repeat)
    lines.append(row("kiln: perplexity operator (kiln-v1 + KenLM)", len(docs), wall, cpu, f"{kiln_auc:.3f}"))
    wall, cpu = timed(lambda: [kenlm_perplexity(model, p) for p in prepared], repeat)
    lines.append(row("KenLM score only (text prepared beforehand)", len(docs), wall, cpu, "same model"))
    wall, cpu = timed(lambda: ppl(alt_model, alt_prepare, docs), repeat)
    lines.append(row(alt_name, len(docs), wall, cpu, f"{alt_auc:.3f}"))
    return lines


def bench_fasttext(docs: list[str], wiki: list[str], weibo: list[str], folder: Path, repeat: int) -> list[str]:
    import fasttext

    from pipeline.lm import ClassifierTrainRequest, train_classifier

    rng = random.Random(1)
    rng.shuffle(weibo)
    train_pos, held_pos = wiki[:900], wiki[900:]
    train_neg, held_neg = weibo[:3000], weibo[3000:3000 + len(held_pos)]
    pos, neg = folder / "pos.txt", folder / "neg.txt"
    pos.write_text("".join(t.replace("\n", " ") + "\n" for t in train_pos), encoding="utf-8")
    neg.write_text("".join(t.replace("\n", " ") + "\n" for t in train_neg), encoding="utf-8")
    model_path = folder / "quality.ftz"
    train_classifier(ClassifierTrainRequest(positive=[str(pos)], negative=[str(neg)], output=model_path),
                     echo=lambda _: None)
    op = QualityClassifier({"model": str(model_path), "threshold": 0.5})
    op.setup()

    # The alternative: the same classifier recipe (settings, quantization) on rjieba words.
    def words(text: str) -> str:
        return " ".join(jieba_sentences(text))

    n = min(len(train_pos), len(train_neg))
    train_lines = [f"{POSITIVE_LABEL} {words(t)}" for t in train_pos[:n]] + \
                  [f"__label__bad {words(t)}" for t in train_neg[:n]]
    rng.shuffle(train_lines)
    alt_train = folder / "alt_train.txt"
    alt_train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    defaults = ClassifierTrainRequest(positive=[], negative=[], output=model_path)
    alt = fasttext.train_supervised(input=str(alt_train), epoch=defaults.epoch, lr=defaults.lr,
                                    wordNgrams=defaults.word_ngrams, dim=defaults.dim, minCount=defaults.min_count,
                                    bucket=defaults.bucket, seed=0, thread=1, verbose=0)
    alt.quantize(input=str(alt_train), qnorm=True, retrain=False, cutoff=defaults.cutoff, thread=1)

    def quality(model, prepare, texts):
        return positive_probabilities(model, [prepare(t) for t in texts])

    kiln_auc = auc(-quality(op.model, prepare_classifier_text, held_pos), -quality(op.model, prepare_classifier_text, held_neg))
    alt_auc = auc(-quality(alt, words, held_pos), -quality(alt, words, held_neg))
    table = table_of(docs, "zh")
    prepared = [prepare_classifier_text(t) for t in docs]
    chars = sum(map(len, docs)) / len(docs)
    lines = [f"\nfastText quality classifier (zh): {len(docs):,} documents, {chars:,.0f} characters on average",
             "", "| configuration | docs/s | docs/CPU-s | AUC held-out wiki vs Weibo |", "|---|---:|---:|---:|"]
    wall, cpu = timed(lambda: run_operators([op], table), repeat)
    lines.append(row("kiln: quality_classifier operator (kiln-v1 + fastText)", len(docs), wall, cpu, f"{kiln_auc:.3f}"))
    wall, cpu = timed(lambda: positive_probabilities(op.model, prepared), repeat)
    lines.append(row("fastText predict only (text prepared beforehand)", len(docs), wall, cpu, "same model"))
    wall, cpu = timed(lambda: quality(alt, words, docs), repeat)
    lines.append(row("rjieba words + fastText", len(docs), wall, cpu, f"{alt_auc:.3f}"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents scored per language (default 2000)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--order", type=int, default=5)
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"bench_scoring: {SHARED} is missing: the benchmark needs ../shared/data", file=sys.stderr)
        return 2
    from common.errors import KilnError
    from pipeline.lm import find_kenlm_tool

    try:
        find_kenlm_tool("lmplz")
    except KilnError as e:
        print(f"bench_scoring: {e}", file=sys.stderr)
        return 2
    half = args.docs // 2
    wiki, weibo = cmrc_paragraphs(), weibo_posts()
    zh_docs = clue_docs()[:half] + weibo[:args.docs - half]
    articles = bbc_articles()
    rng = random.Random(0)
    rng.shuffle(articles)
    en_train, en_rest = articles[:1800], articles[1800:]
    en_held = [p.strip() for a in en_rest for p in a.split("\n\n")[1:] if len(p.strip()) > 150][:200]
    en_docs = (articles[:half] + reuters_bodies(args.docs - half))[:args.docs]
    out = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-scoring-") as tmp:
        folder = Path(tmp)
        out += bench_kenlm("zh", zh_docs, wiki[:900], wiki[900:], folder, args.order, args.repeat)
        out += bench_kenlm("en", en_docs, en_train, en_held, folder, args.order, args.repeat)
        out += bench_fasttext(zh_docs, wiki, weibo, folder, args.repeat)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
