"""Model scoring: KenLM perplexity, a fastText quality classifier, transformer perplexity.

Ziya2 ranks every document by the perplexity of KenLM models trained on Chinese and English
Wikipedia; CCNet labels documents head/middle/tail the same way. kiln trains its own models
(`kiln lm train`, `kiln classifier train`), because nothing may be downloaded at run time.

Text preparation is the contract between training and scoring: a model only measures what
it was trained on when the scorer cuts text exactly as the trainer did. `prepare_sentences`
is that one function; `kiln lm train` and `kiln classifier train` write what it returns,
the operators here score what it returns, and every model carries a JSON card naming the
preparation (`PREPARATION`). An operator refuses a model whose card names a preparation it
does not implement.

Preparation `kiln-v1`:
1. `operators.normalize.Normalize` with its defaults (NFKC keeping Chinese punctuation,
   control and invisible characters removed, whitespace collapsed);
2. lower case, every digit folded to 0 (as CCNet does: numbers carry little of a text's
   fluency and would otherwise spread counts over thousands of rare n-grams);
3. lines split into sentences after 。！？!?； (and after . ! ? followed by a space), so that
   a corpus with one paragraph per line and one with one sentence per line give the same
   units;
4. tokens: every Chinese (and Japanese/Korean) character alone, every run of other letters
   and digits as one word, every other non-space symbol alone.

Characters rather than jieba words for Chinese: a character model needs no segmenter, whose
mistakes on noisy web text would themselves show up as perplexity, and it keeps the
vocabulary small enough for the modest reference corpora kiln trains on (words sparsify a
few megabytes of Wikipedia badly). English gets plain word tokens; a mixed line gets both.

Document perplexity is CCNet's: 10 ** (-sum of log10 probabilities / number of predicted
tokens), summing over the document's sentences with an end-of-sentence token each.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import field_validator, model_validator

from operators.base import Filter, Params, Resources, reasons_where, set_column, text_column
from operators.normalize import Normalize
from operators.registry import register

PREPARATION = "kiln-v1"
PREPARATION_DESCRIPTION = (
    "normalize (NFKC keeping CJK punctuation, controls/invisibles removed, whitespace collapsed); "
    "lowercase; digits -> 0; sentences split after 。！？!?； and after .!? followed by space; "
    "tokens: each CJK/kana/hangul character, each run of other letters/digits, each other symbol"
)

_NORMALIZER = Normalize()
_DIGIT = re.compile("[0-9]")  # after NFKC, which folds full-width digits to ASCII
_CJK = (
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
    "\U00020000-\U0002ffff\U00030000-\U0003134f"
)
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+|[^\w\s]|_")
# A break after CJK sentence punctuation (after the closing quote or bracket when one
# follows), or at spaces after . ! ? (optionally with a closing quote or bracket).
_SENTENCE_BREAK = re.compile(
    r"(?<=[。！？!?；])(?![”’\"』」）)。！？!?；])\s*|(?<=[。！？!?；][”’\"』」）)])\s*"
    r"|(?<=[.!?])\s+|(?<=[.!?][”’\")])\s+"
)


def split_sentences(text: str) -> list[str]:
    """Steps 1-3 of `kiln-v1`: the document normalized, lower-cased, digits folded, cut into
    sentences (untokenized; empty ones dropped)."""
    text = _DIGIT.sub("0", _NORMALIZER.normalize(text).lower())
    return [s for line in text.split("\n") for s in _SENTENCE_BREAK.split(line) if s.strip()]


def tokenize(sentence: str) -> list[str]:
    """Step 4 of `kiln-v1`: CJK characters alone, other letter/digit runs as words, every
    other symbol alone."""
    return _TOKEN.findall(sentence)


class _PreparedCache:
    """The prepared sentences of the texts this process saw last, up to `max_chars` of text:
    a stage that runs `perplexity` and `quality_classifier` prepares each document once,
    not once per operator (the preparation costs more than either model)."""

    # A batch of the stage is enough: its operators run one after the other on each batch.
    def __init__(self, max_chars: int = 16 << 20) -> None:
        self.max_chars = max_chars
        self.entries: dict[str, tuple[str, ...]] = {}
        self.chars = 0

    def get(self, text: str) -> tuple[str, ...]:
        found = self.entries.get(text)
        if found is None:
            found = tuple(" ".join(tokens) for tokens in map(_TOKEN.findall, split_sentences(text)) if tokens)
            if self.chars + len(text) > self.max_chars:
                self.entries.clear()
                self.chars = 0
            self.entries[text] = found
            self.chars += len(text)
        return found


_PREPARED = _PreparedCache()


def prepare_sentences(text: str) -> list[str]:
    """The `kiln-v1` preparation: a document as sentences of space-separated tokens.

    The one function both training (`kiln lm train`, `kiln classifier train`) and scoring
    use; empty sentences are dropped."""
    return list(_PREPARED.get(text))


def prepare_paragraphs(text: str) -> list[list[str]]:
    """Per non-empty line of the document, its prepared sentences (for per-paragraph scores)."""
    return [s for s in (prepare_sentences(line) for line in text.split("\n")) if s]


def prepare_classifier_text(text: str, max_tokens: int | None = None) -> str:
    """A document as one line of tokens, the input fastText trains and predicts on."""
    line = " ".join(_PREPARED.get(text))
    if max_tokens is not None:
        tokens = line.split(" ")
        if len(tokens) > max_tokens:
            line = " ".join(tokens[:max_tokens])
    return line


PREPARATIONS = {PREPARATION: prepare_sentences}


# --------------------------------------------------------------------------- model cards


class ModelError(FileNotFoundError):
    """A model file or card is missing or does not fit the operator; the message says how
    to make one."""


def card_path(model_path: str | Path) -> Path:
    """The JSON card beside a model: `models/lm/zh.binary` -> `models/lm/zh.json`."""
    return Path(model_path).with_suffix(".json")


def read_card(model_path: str | Path, kind: str, how_to_train: str) -> dict[str, Any]:
    """Check that a model and its card exist and that the card's preparation is one kiln
    implements; returns the card."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"{kind} model {model_path} does not exist: train one with `{how_to_train}`")
    path = card_path(model_path)
    if not path.is_file():
        raise ModelError(f"{kind} model {model_path} has no card {path}: kiln only uses models it "
                         f"trained itself, so it knows how their text was prepared (`{how_to_train}`)")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable model card: {e}") from None
    if card.get("kind") != kind:
        raise ModelError(f"{path}: the card is for a {card.get('kind')!r} model, not {kind!r}")
    if card.get("preparation") not in PREPARATIONS:
        raise ModelError(f"{path}: the model was trained on text prepared as {card.get('preparation')!r}, "
                         f"which this kiln does not implement (it knows {', '.join(PREPARATIONS)}); "
                         f"retrain it with `{how_to_train}`")
    return card


# --------------------------------------------------------------------------- KenLM


def kenlm_perplexity(model: Any, sentences: Iterable[str]) -> tuple[float | None, int]:
    """CCNet's document perplexity over prepared sentences, and the number of predicted
    tokens (each sentence's tokens plus its end). None when there is nothing to score."""
    log10_total = 0.0
    predicted = 0
    for sentence in sentences:
        log10_total += model.score(sentence, bos=True, eos=True)
        predicted += sentence.count(" ") + 2
    if predicted == 0:
        return None, 0
    return 10.0 ** (-log10_total / predicted), predicted


def _absolute(path: str) -> str:
    # Resolved where the config is loaded: Ray workers need not share the driver's cwd.
    return str(Path(path).expanduser().resolve())


class PerplexityParams(Params):
    models: dict[str, str]  # language -> KenLM binary (or ARPA) trained by `kiln lm train`
    column: str = "stat.ppl"
    # Documents whose language has no model (or no language at all): keep them with a null
    # perplexity, or reject them with reason `no_lm_for_lang`.
    missing_lang: Literal["keep", "reject"] = "keep"
    default_lang: str | None = None  # used where the `lang` column is null
    paragraphs: bool = False  # also write `<column>_paragraphs`: one perplexity per line
    max_ppl: float | None = None  # optional hard cap: reject above it, reason `perplexity`

    @field_validator("models")
    @classmethod
    def _paths(cls, models: dict[str, str]) -> dict[str, str]:
        if not models:
            raise ValueError("name at least one language's model, e.g. {zh: models/lm/zh.binary}")
        return {lang: _absolute(path) for lang, path in models.items()}


@register
class Perplexity(Filter):
    """KenLM perplexity per document (`stat.ppl`, lower is more like the reference text),
    with the model of the document's language; models are loaded once per actor.

    Selection by perplexity needs the whole corpus (quantiles), so it is the global operator
    `perplexity_select`; this filter only rejects documents without a model when told to,
    and above `max_ppl` when one is set."""

    name = "perplexity"
    Params = PerplexityParams
    resources = Resources(num_cpus=1)

    def _card(self, lang: str, path: str) -> dict[str, Any]:
        card = read_card(path, "kenlm", f"kiln lm train --lang {lang} --corpus FILES --output {path}")
        if card.get("language") != lang:
            raise ModelError(f"{path}: the card says the model is for {card.get('language')!r}, "
                             f"but the config uses it for {lang!r}")
        return card

    def check_inputs(self) -> list[tuple[str, str]]:
        problems = []
        for lang, path in self.params.models.items():
            try:
                self._card(lang, path)
            except ModelError as e:
                problems.append((f"models.{lang}", str(e)))
        return problems

    def setup(self) -> None:
        import kenlm

        self.models: dict[str, Any] = {}
        self.cards: dict[str, dict[str, Any]] = {}
        for lang, path in self.params.models.items():
            self.cards[lang] = self._card(lang, path)
            self.models[lang] = kenlm.Model(path)

    def _langs(self, batch: pa.Table) -> list[str | None]:
        if "lang" not in batch.column_names:
            return [self.params.default_lang] * batch.num_rows
        return [lang if lang is not None else self.params.default_lang for lang in batch.column("lang").to_pylist()]

    def compute(self, batch: pa.Table) -> pa.Table:
        texts = text_column(batch)
        langs = self._langs(batch)
        ppl: list[float | None] = []
        per_paragraph: list[list[float | None] | None] = []
        for text, lang in zip(texts, langs):
            model = self.models.get(lang) if lang is not None else None
            if model is None:
                ppl.append(None)
                per_paragraph.append(None)
                continue
            if self.params.paragraphs:
                paragraphs = prepare_paragraphs(text)
                scores = [kenlm_perplexity(model, p)[0] for p in paragraphs]
                per_paragraph.append(scores)
                ppl.append(kenlm_perplexity(model, (s for p in paragraphs for s in p))[0])
            else:
                ppl.append(kenlm_perplexity(model, prepare_sentences(text))[0])
        out = set_column(batch, self.params.column, pa.array(ppl, pa.float64()))
        if self.params.paragraphs:
            out = set_column(out, self.params.column + "_paragraphs", pa.array(per_paragraph, pa.list_(pa.float64())))
        return out

    def decide(self, batch: pa.Table) -> pa.Array:
        langs = self._langs(batch)
        no_model = np.array([lang not in self.models for lang in langs], dtype=bool)
        reasons = pa.nulls(batch.num_rows, pa.string())
        if self.params.missing_lang == "reject":
            reasons = reasons_where(no_model, "no_lm_for_lang")
        if self.params.max_ppl is not None:
            values = batch.column(self.params.column).to_numpy(zero_copy_only=False)
            over = np.nan_to_num(values.astype(float), nan=-math.inf) > self.params.max_ppl
            too_high = reasons_where(over, "perplexity")
            reasons = pc.coalesce(reasons, too_high)
        return reasons


# --------------------------------------------------------------------------- fastText


POSITIVE_LABEL = "__label__good"
NEGATIVE_LABEL = "__label__bad"


class QualityParams(Params):
    model: str  # fastText model trained by `kiln classifier train`
    column: str = "stat.quality"
    # Reject documents whose probability of being like the positive examples is below this
    # (reason `low_quality`); null only measures.
    threshold: float | None = 0.5
    max_tokens: int | None = 4096  # longer documents are judged by their beginning

    @field_validator("model")
    @classmethod
    def _path(cls, path: str) -> str:
        return _absolute(path)

    @field_validator("threshold")
    @classmethod
    def _probability(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError("threshold is a probability between 0 and 1")
        return v


def positive_probabilities(model: Any, lines: list[str], positive: str = POSITIVE_LABEL) -> np.ndarray:
    """P(positive label) for each prepared line, from a binary fastText model."""
    if not lines:
        return np.zeros(0)
    labels, probs = model.predict(lines, k=2)
    out = np.empty(len(lines))
    for i, (names, values) in enumerate(zip(labels, probs)):
        by_label = dict(zip(names, np.asarray(values, dtype=float)))
        if positive in by_label:
            out[i] = by_label[positive]
        else:  # k=2 of a binary model names both labels; keep the complement just in case
            out[i] = 1.0 - sum(by_label.values())
    return np.clip(out, 0.0, 1.0)


@register
class QualityClassifier(Filter):
    """fastText quality score: `stat.quality`, the probability that a document is like the
    classifier's positive examples (clean reference text); below `threshold` is rejected
    with reason `low_quality`."""

    name = "quality_classifier"
    Params = QualityParams
    resources = Resources(num_cpus=1)

    def _card(self) -> dict[str, Any]:
        return read_card(self.params.model, "fasttext",
                         f"kiln classifier train --positive FILES --negative FILES --output {self.params.model}")

    def check_inputs(self) -> list[tuple[str, str]]:
        try:
            self._card()
        except ModelError as e:
            return [("model", str(e))]
        return []

    def setup(self) -> None:
        import fasttext

        self.card = self._card()
        self.positive = self.card.get("positive_label", POSITIVE_LABEL)
        self.model = fasttext.load_model(self.params.model)

    def compute(self, batch: pa.Table) -> pa.Table:
        lines = [prepare_classifier_text(t, self.params.max_tokens) for t in text_column(batch)]
        scores = positive_probabilities(self.model, lines, self.positive)
        return set_column(batch, self.params.column, pa.array(scores, pa.float64()))

    def decide(self, batch: pa.Table) -> pa.Array:
        if self.params.threshold is None:
            return pa.nulls(batch.num_rows, pa.string())
        scores = batch.column(self.params.column).to_numpy()
        return reasons_where(scores < self.params.threshold, "low_quality")


# --------------------------------------------------------------------------- transformer LM


class LMPerplexityParams(Params):
    model: str  # a local Hugging Face causal-LM folder (for example a kiln trainer export)
    column: str = "stat.lm_ppl"
    max_tokens: int = 1024  # documents are scored on their first max_tokens tokens
    batch_tokens: int = 16384  # padded tokens per forward pass; batches group similar lengths
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_ppl: float | None = None  # reject above it (reason `lm_perplexity`); null only measures

    @field_validator("model")
    @classmethod
    def _path(cls, path: str) -> str:
        return _absolute(path)

    @model_validator(mode="after")
    def _sizes(self) -> LMPerplexityParams:
        if self.max_tokens < 2:
            raise ValueError("max_tokens must be at least 2 (perplexity needs a token to predict)")
        if self.batch_tokens < self.max_tokens:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold one document of max_tokens ({self.max_tokens})")
        return self


@register
class LMPerplexity(Filter):
    """Perplexity under a Hugging Face causal LM from a local folder (`stat.lm_ppl`):
    documents batched by length, bf16 on a GPU, fp32 on CPU (fine for small models). Set
    `resources: {num_gpus: 1}` in the config to run it in GPU actors."""

    name = "lm_perplexity"
    Params = LMPerplexityParams
    resources = Resources(num_cpus=1, num_gpus=0)

    def check_inputs(self) -> list[tuple[str, str]]:
        path = Path(self.params.model)
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "is not a Hugging Face model folder (no config.json)"
            return [("model", f"{path} {what}: point lm_perplexity.model at a local checkpoint, for example an "
                              "export of `kiln train`")]
        return []

    def setup(self) -> None:
        from trainer.evaluate import load_model

        path = Path(self.params.model)
        for _, problem in self.check_inputs():
            raise ModelError(problem)
        # kiln eval's loader and scorer: the same perplexity for a document in a stage and in
        # `kiln eval` (bf16 on a GPU, fp32 on CPU).
        self.loaded = load_model(path, device=self.params.device, max_length=self.params.max_tokens)
        self.tokenizer = self.loaded.tokenizer

    def _encode(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.params.max_tokens)
        return encoded["input_ids"]

    def score_ids(self, ids: list[list[int]]) -> list[float | None]:
        """Perplexity of each token sequence (None for sequences of fewer than 2 tokens)."""
        from trainer.evaluate import token_nll

        nll, count = token_nll(self.loaded, ids, batch_size=max(1, len(ids)), batch_tokens=self.params.batch_tokens)
        return [float(math.exp(n / c)) if c else None for n, c in zip(nll, count)]

    def compute(self, batch: pa.Table) -> pa.Table:
        scores = self.score_ids(self._encode(text_column(batch)))
        return set_column(batch, self.params.column, pa.array(scores, pa.float64()))

    def decide(self, batch: pa.Table) -> pa.Array:
        if self.params.max_ppl is None:
            return pa.nulls(batch.num_rows, pa.string())
        values = batch.column(self.params.column).to_numpy(zero_copy_only=False).astype(float)
        return reasons_where(np.nan_to_num(values, nan=-math.inf) > self.params.max_ppl, "lm_perplexity")
