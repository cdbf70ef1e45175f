"""Ziya2's data evaluation: score a random sample of the final documents and judge the run.

Ziya2 (arXiv 2311.03301) checks its cleaned data by drawing a random 1% sample and scoring it
for privacy words, toxic words, advertising words, HTML function words and perplexity; the
data passes when no more than 1 document in 1,000 of the sample is unqualified. Here a
document is unqualified when any measured criterion exceeds its threshold. The rates are the
per-document columns the privacy and sensitive-word operators write (hits per 1,000
characters); a criterion whose column the run does not have is reported as not measured,
never guessed. Perplexity is judged only against a threshold the user gives (globally or per
language), since the run's own perplexity cut-offs already bound every kept document.

The sample is drawn with a seeded generator over row positions, and only the sampled rows'
columns are read (one row group at a time): the text only for the example documents shown.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.errors import KilnError
from pipeline.report.data import (
    files_of,
    histogram,
    numeric_values,
    row_count,
    schema_of,
    take_rows,
)

PASS_RATE = 1 / 1000
CONFIDENCE = 0.95
# criterion -> (column, what it measures)
CRITERIA: dict[str, tuple[str, str]] = {
    "privacy": ("stat.rate_privacy", "privacy words and personal data (hits per 1,000 characters)"),
    "toxic": ("stat.rate_toxic", "toxic and sensitive words (hits per 1,000 characters)"),
    "ad": ("stat.rate_ad", "advertising words (hits per 1,000 characters)"),
    "html": ("stat.rate_html", "HTML function words (hits per 1,000 characters)"),
    "ppl": ("stat.ppl", "perplexity of a reference language model"),
}
# Hits per 1,000 characters above which a sampled document counts as unqualified. A
# document of 1,000 characters with one toxic word is already unqualified; privacy, ad and
# HTML words are allowed once per 1,000 characters (a contact line, a link), not more.
DEFAULT_THRESHOLDS: dict[str, float] = {"privacy": 1.0, "toxic": 0.5, "ad": 1.0, "html": 1.0}


def parse_thresholds(text: str | None) -> dict[str, float]:
    """`privacy=1,toxic=0.5,ppl=3000,ppl.zh=2500` on top of the defaults."""
    thresholds = dict(DEFAULT_THRESHOLDS)
    if not text:
        return thresholds
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        base = name.split(".", 1)[0]
        if not sep or base not in CRITERIA or (base != "ppl" and "." in name):
            known = ", ".join(CRITERIA)
            raise KilnError(f"--thresholds: {item!r} is not NAME=NUMBER with NAME one of {known} "
                            "(or ppl.<lang>)")
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise KilnError(f"--thresholds: {value.strip()!r} in {item!r} is not a number") from None
    return thresholds


@dataclass
class EvalOptions:
    fraction: float = 0.01
    min_docs: int = 1000
    # 1% of a billion documents is ten million; 100,000 already bound a 1-in-1,000 rate
    # tightly (the 95% upper bound for 0 unqualified is 0.003%), at a fraction of the reading.
    max_docs: int = 100_000
    seed: int = 0
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    examples: int = 3
    max_chars: int = 600


def binomial_upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a proportion seen k times in n."""
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1 - confidence

    def cdf(p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p)
        if p <= 0:
            return 1.0
        if p >= 1:
            return 0.0
        log_p, log_q = math.log(p), math.log1p(-p)
        total = 0.0
        for i in range(k + 1):
            log_term = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
            total += math.exp(log_term)
        return total

    low, high = k / n, 1.0
    for _ in range(100):
        mid = (low + high) / 2
        if cdf(mid) > alpha:
            low = mid
        else:
            high = mid
    return high


def docs_needed(rate: float = PASS_RATE, confidence: float = CONFIDENCE) -> int:
    """Sample size at which zero unqualified documents show the rate is below `rate`."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - rate))


def excerpt(text: str | None, max_chars: int) -> str:
    text = text or ""
    return text if len(text) <= max_chars else text[:max_chars].rstrip() + " …"


def _threshold_for(criterion: str, lang: str | None, thresholds: dict[str, float]) -> float | None:
    if criterion == "ppl" and lang and f"ppl.{lang}" in thresholds:
        return thresholds[f"ppl.{lang}"]
    return thresholds.get(criterion)


def evaluate(folder: str | os.PathLike, where: str, options: EvalOptions) -> dict[str, Any]:
    """Sample the folder's documents and score them; returns the evaluation section."""
    files = files_of(folder)
    total = row_count(files)
    schema = schema_of(files)
    result: dict[str, Any] = {
        "where": where, "population": total, "fraction": options.fraction, "min_docs": options.min_docs,
        "max_docs": options.max_docs,
        "seed": options.seed, "pass_rate": PASS_RATE, "criteria": [], "not_measured": [],
    }
    if total == 0:
        result.update(sample=0, verdict="not evaluated", verdict_note="the final stage kept no documents")
        return result
    size = min(total, max(options.min_docs, min(options.max_docs, math.ceil(options.fraction * total))))
    rng = np.random.default_rng(options.seed)
    positions = np.sort(rng.choice(total, size=size, replace=False))
    measured = {name: col for name, (col, _) in CRITERIA.items() if col in schema.names}
    sample = take_rows(files, positions, ["id", "source", "lang", *measured.values()])
    def values_of(name: str) -> list[Any]:
        return sample.column(name).to_pylist() if name in sample.column_names else [None] * size

    langs = values_of("lang")
    result["sample"] = size
    unqualified = np.zeros(size, dtype=bool)
    reasons: list[list[str]] = [[] for _ in range(size)]
    examples_needed: dict[int, None] = {}
    for name, (column, description) in CRITERIA.items():
        if name not in measured:
            result["not_measured"].append({"criterion": name, "column": column, "description": description})
            continue
        values = numeric_values(sample.column(column))
        limits = np.array([_threshold_for(name, lang, options.thresholds) for lang in langs], dtype=float)
        judged = bool(np.isfinite(limits).any())
        over = np.isfinite(values) & np.isfinite(limits) & (values > limits)
        finite = values[np.isfinite(values)]
        entry: dict[str, Any] = {
            "criterion": name, "column": column, "description": description,
            "threshold": options.thresholds.get(name),
            "thresholds_by_lang": {k.split(".", 1)[1]: v for k, v in options.thresholds.items()
                                   if k.startswith(f"{name}.")},
            "judged": judged, "scored": int(finite.size), "missing": int(size - finite.size),
            "mean": float(finite.mean()) if finite.size else None,
            "p50": float(np.quantile(finite, 0.5)) if finite.size else None,
            "p99": float(np.quantile(finite, 0.99)) if finite.size else None,
            "max": float(finite.max()) if finite.size else None,
            "over": int(over.sum()),
            "histogram": histogram(values, np.array([])),
        }
        if judged:
            unqualified |= over
            for i in np.flatnonzero(over):
                reasons[i].append(name)
        order = [i for i in np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
                 if np.isfinite(values[i]) and values[i] > 0][: options.examples]
        entry["examples"] = [{"row": int(i), "value": float(values[i])} for i in order]
        examples_needed.update(dict.fromkeys(order))
        result["criteria"].append(entry)
    unqualified_rows = np.flatnonzero(unqualified)
    examples_needed.update(dict.fromkeys(unqualified_rows[:10].tolist()))
    random_rows = rng.choice(size, size=min(5, size), replace=False).tolist()
    examples_needed.update(dict.fromkeys(random_rows))
    texts = _texts(files, positions, sorted(examples_needed), options.max_chars)
    ids, sources = values_of("id"), values_of("source")

    def doc(i: int, **more: Any) -> dict[str, Any]:
        return {"id": ids[i], "source": sources[i], "lang": langs[i], "text": texts.get(i, ""), **more}

    for entry in result["criteria"]:
        entry["examples"] = [doc(e["row"], value=e["value"]) for e in entry["examples"]]
    result["unqualified_examples"] = [doc(int(i), failed=reasons[i]) for i in unqualified_rows[:10]]
    result["random_examples"] = [doc(int(i)) for i in random_rows]
    judged_any = any(c["judged"] for c in result["criteria"])
    count = int(unqualified.sum())
    result["unqualified"] = count
    result["unqualified_rate"] = count / size
    result["upper_bound_95"] = binomial_upper_bound(count, size)
    result["docs_needed_for_confidence"] = docs_needed()
    if not judged_any:
        result["verdict"] = "not evaluated"
        result["verdict_note"] = ("none of the rates was measured: the run has no stat.rate_* columns "
                                  "(add the privacy and sensitive-word operators to a stage)")
        return result
    passed = count / size <= PASS_RATE
    result["verdict"] = "pass" if passed else "fail"
    note = (f"{count:,} of {size:,} sampled documents are unqualified ({count / size:.2%}); "
            f"the rule allows at most 1 in 1,000.")
    if passed and result["upper_bound_95"] > PASS_RATE:
        note += (f" The sample is small: at 95% confidence the true rate is only shown to be below "
                 f"{result['upper_bound_95']:.2%}; {docs_needed():,} documents with none unqualified "
                 f"would show it is below 0.1%.")
    if result["not_measured"]:
        note += " Not measured: " + ", ".join(c["criterion"] for c in result["not_measured"]) + "."
    result["verdict_note"] = note
    return result


def _texts(files: list[str], positions: np.ndarray, rows: list[int], max_chars: int) -> dict[int, str]:
    """Excerpts of the text of the given sample rows, reading only their row groups."""
    if not rows:
        return {}
    table = take_rows(files, positions[rows], ["text"])
    by_position = dict(zip(sorted(positions[rows].tolist()), table.column("text").to_pylist()))
    return {row: excerpt(by_position.get(int(positions[row])), max_chars) for row in rows}
