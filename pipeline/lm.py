"""Training kiln's own scoring models: KenLM n-gram models (lmplz) and the fastText quality
classifier, each written with a JSON card beside it.

Both read their corpora with kiln's readers (txt one document per line, jsonl, parquet,
compressed or not) and prepare text with `operators.scoring.prepare_sentences`, the very
function the scoring operators use, so a model sees at scoring time the text it was trained
on. The card records what the operators check (kind, language, preparation) and what makes
a model reproducible (order, lmplz arguments, corpus hashes, counts, kenlm version).

KenLM's `lmplz` and `build_binary` are built from the kenlm sdist by `make lmplz`
(scripts/build_lmplz.sh) into third_party/kenlm/bin; `KILN_LMPLZ` and `KILN_BUILD_BINARY`
point elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.errors import InputError, KilnError
from common.inputs import InputSpec
from operators.base import REJECT_OP
from operators.scoring import (
    NEGATIVE_LABEL,
    POSITIVE_LABEL,
    PREPARATION,
    PREPARATION_DESCRIPTION,
    card_path,
    prepare_classifier_text,
    prepare_sentences,
)

REPO = Path(__file__).resolve().parents[1]
KENLM_DIR = REPO / "third_party" / "kenlm"


class ToolMissing(KilnError):
    """lmplz or build_binary cannot be found."""


# --------------------------------------------------------------------------- finding lmplz


def find_kenlm_tool(name: str) -> Path:
    """`lmplz` or `build_binary`: $KILN_LMPLZ / $KILN_BUILD_BINARY, then third_party/kenlm/bin
    (where `make lmplz` puts them), then the Python environment's bin, then PATH."""
    env = os.environ.get(f"KILN_{name.upper()}")
    if env:
        path = Path(env)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ToolMissing(f"KILN_{name.upper()}={env} is not an executable file")
        return path
    candidates = [KENLM_DIR / "bin" / name, Path(sys.prefix) / "bin" / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise ToolMissing(f"KenLM's {name} is not built: run `make lmplz` (it builds lmplz and build_binary from "
                      f"the kenlm sdist into {KENLM_DIR / 'bin'}), or set KILN_{name.upper()}")


def kenlm_version(lmplz: Path) -> str:
    version_file = lmplz.parent / "VERSION"
    return version_file.read_text().strip() if version_file.is_file() else "unknown"


# --------------------------------------------------------------------------- corpora


@dataclass
class CorpusStats:
    files: list[dict[str, Any]] = field(default_factory=list)
    documents: int = 0
    unreadable: int = 0  # records the readers rejected (malformed JSON, bad UTF-8, ...)
    sentences: int = 0
    tokens: int = 0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def iter_documents(paths: Sequence[str], stats: CorpusStats, text_field: str = "text",
                   txt_mode: str = "lines") -> Iterator[str]:
    """Texts of every usable record of the files (folders and globs allowed), through kiln's
    readers; unreadable records are counted, not fatal."""
    from common.readers import expand_inputs, read_file

    if not paths:
        raise InputError("no corpus files given")
    specs = [InputSpec(path=p, text_field=text_field, txt_mode=txt_mode) for p in paths]
    try:
        files = expand_inputs(specs)
    except InputError as e:  # name the file, not the position in a config's inputs list
        raise InputError(re.sub(r"^inputs\[\d+\](\.path)?: ", "", str(e))) from None
    for file in files:
        stats.files.append({"path": file.path, "bytes": file.size, "sha256": file_sha256(file.path)})
        for table in read_file(file, specs[file.spec_index]):
            rejected = table.column(REJECT_OP).to_pylist()
            for text, bad in zip(table.column("text").to_pylist(), rejected):
                if bad is not None:
                    stats.unreadable += 1
                    continue
                stats.documents += 1
                yield text


def write_prepared(paths: Sequence[str], out: Path, stats: CorpusStats, text_field: str = "text",
                   txt_mode: str = "lines") -> str:
    """Write the corpus as prepared sentences, one per line (lmplz's input); returns the
    sha256 of what was written, i.e. of exactly the text the model is estimated on."""
    digest = hashlib.sha256()
    with open(out, "w", encoding="utf-8") as f:
        for text in iter_documents(paths, stats, text_field, txt_mode):
            for sentence in prepare_sentences(text):
                line = sentence + "\n"
                f.write(line)
                digest.update(line.encode("utf-8"))
                stats.sentences += 1
                stats.tokens += sentence.count(" ") + 1
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_card(model: Path, card: dict[str, Any]) -> Path:
    path = card_path(model)
    path.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- KenLM


@dataclass
class LMTrainRequest:
    lang: str
    corpus: list[str]
    output: Path
    order: int = 5
    memory: str = "1G"  # lmplz -S: memory for sorting
    prune: list[int] = field(default_factory=list)  # lmplz --prune thresholds per order
    discount_fallback: bool = True
    text_field: str = "text"
    txt_mode: str = "lines"
    keep_arpa: bool = False
    min_sentences: int = 10


def _run(command: list[str], stdin_path: Path | None, stdout_path: Path | None, what: str) -> str:
    """Run a KenLM program; its stderr is returned (lmplz reports there), or raised as a
    one-line error when it fails."""
    with ExitStack() as files:
        stdin = files.enter_context(open(stdin_path, "rb")) if stdin_path else subprocess.DEVNULL
        stdout = files.enter_context(open(stdout_path, "wb")) if stdout_path else subprocess.DEVNULL
        result = subprocess.run(command, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, check=False)
    log = result.stderr.decode("utf-8", "replace")
    if result.returncode != 0:
        last = [line for line in log.strip().splitlines() if line.strip()][-3:]
        raise KilnError(f"{what} failed (exit {result.returncode}): {' | '.join(last)}")
    return log


def fallback_orders(lmplz_log: str) -> list[int]:
    """Orders for which lmplz used fixed fallback discounts (it says so on stderr)."""
    return [int(m) for m in re.findall(r"Substituting fallback discounts for order (\d+)", lmplz_log)]


def estimate_kenlm(prepared: Path, output: Path, order: int, memory: str = "1G", prune: Sequence[int] = (),
                   discount_fallback: bool = True, tmp_dir: Path | None = None, echo=print,
                   arpa_copy: Path | None = None) -> tuple[list[str], str]:
    """lmplz on a file of prepared sentences, then build_binary into `output`. Returns the
    lmplz arguments (without its temporary folder) and its log."""
    lmplz, build_binary = find_kenlm_tool("lmplz"), find_kenlm_tool("build_binary")
    with tempfile.TemporaryDirectory(prefix="kiln-lmplz-", dir=tmp_dir or output.parent) as tmp:
        work = Path(tmp)
        arpa = work / "model.arpa"
        args = ["-o", str(order), "-S", memory]
        if prune:
            args += ["--prune", *map(str, prune)]
        if discount_fallback:
            # Modified Kneser-Ney estimates its discounts from counts of counts (how many
            # n-grams occur once, twice, ...). On a small corpus some of those are zero and
            # lmplz refuses to estimate; the fallback then uses fixed discounts (0.5, 1, 1.5)
            # for the orders that need them. On large corpora it never triggers.
            args.append("--discount_fallback")
        echo(f"lmplz {' '.join(args)}")
        log = _run([str(lmplz), *args, "-T", str(work)], prepared, arpa, "lmplz")
        binary = work / "model.binary"
        _run([str(build_binary), str(arpa), str(binary)], None, None, "build_binary")
        os.replace(binary, output)
        if arpa_copy is not None:
            os.replace(arpa, arpa_copy)
    return args, log


def train_kenlm(request: LMTrainRequest, echo=print) -> dict[str, Any]:
    """Prepare the corpus, estimate an order-N model with lmplz, convert it with
    build_binary, and write the card. Returns the card."""
    if request.order < 2:
        raise KilnError("--order must be at least 2")
    lmplz = find_kenlm_tool("lmplz")
    find_kenlm_tool("build_binary")
    output = Path(request.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats()
    with tempfile.TemporaryDirectory(prefix="kiln-lm-", dir=output.parent) as tmp:
        tmp_dir = Path(tmp)
        prepared = tmp_dir / "corpus.txt"
        corpus_sha = write_prepared(request.corpus, prepared, stats, request.text_field, request.txt_mode)
        echo(f"prepared {stats.documents:,} documents -> {stats.sentences:,} sentences, {stats.tokens:,} tokens "
             f"({stats.unreadable:,} unreadable records skipped)")
        if stats.sentences < request.min_sentences:
            raise KilnError(f"the corpus has only {stats.sentences} sentences after preparation; "
                            f"a language model needs at least {request.min_sentences}")
        args, lmplz_log = estimate_kenlm(prepared, output, request.order, request.memory, request.prune,
                                         request.discount_fallback, tmp_dir, echo,
                                         arpa_copy=output.with_suffix(".arpa") if request.keep_arpa else None)
    card = {
        "kind": "kenlm",
        "language": request.lang,
        "order": request.order,
        "preparation": PREPARATION,
        "preparation_description": PREPARATION_DESCRIPTION,
        "corpus": {
            "files": stats.files,
            "prepared_sha256": corpus_sha,
            "documents": stats.documents,
            "unreadable_records": stats.unreadable,
            "sentences": stats.sentences,
            "tokens": stats.tokens,
        },
        "lmplz": {"version": kenlm_version(lmplz), "arguments": args,
                  "fallback_discount_orders": fallback_orders(lmplz_log)},
        "model": {"file": output.name, "bytes": output.stat().st_size, "sha256": file_sha256(output)},
        "created": _now(),
    }
    write_card(output, card)
    return card


# --------------------------------------------------------------------------- fastText


@dataclass
class ClassifierTrainRequest:
    positive: list[str]
    negative: list[str]
    output: Path
    epoch: int = 10
    lr: float = 0.5
    word_ngrams: int = 2
    dim: int = 64
    min_count: int = 1
    bucket: int = 2_000_000  # fastText's default; smaller tables made training diverge (NaN)
    # The trained model holds bucket x dim floats (500 MB at the defaults), which every actor
    # would load. fastText's own quantization keeps the `cutoff` most useful rows of the
    # input matrix, product-quantized: a few MB, the same validation accuracy in kiln's
    # tests and demo. None keeps the full model.
    cutoff: int | None = 100_000
    validation: float = 0.1  # share of each class held out for precision/recall
    balance: bool = True  # downsample the larger class to the size of the smaller
    seed: int = 0
    text_field: str = "text"
    txt_mode: str = "lines"
    max_tokens: int = 4096


def _examples(paths: Sequence[str], label: str, request: ClassifierTrainRequest, stats: CorpusStats) -> list[str]:
    lines = []
    for text in iter_documents(paths, stats, request.text_field, request.txt_mode):
        prepared = prepare_classifier_text(text, request.max_tokens)
        if prepared:
            lines.append(f"{label} {prepared}")
    return lines


def binary_metrics(truth: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    pairs = [(bool(t), bool(p)) for t, p in zip(truth, predicted)]
    tp = sum(t and p for t, p in pairs)
    fp = sum((not t) and p for t, p in pairs)
    fn = sum(t and not p for t, p in pairs)
    tn = sum((not t) and not p for t, p in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = (tp + tn) / max(1, tp + fp + fn + tn)
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "accuracy": round(accuracy, 4), "examples": tp + fp + fn + tn}


def train_classifier(request: ClassifierTrainRequest, echo=print) -> dict[str, Any]:
    """Train a binary fastText classifier (positive = like the reference text) on prepared
    text, report precision/recall on a held-out split, write the model and its card."""
    import fasttext

    from operators.scoring import positive_probabilities

    rng = random.Random(request.seed)
    pos_stats, neg_stats = CorpusStats(), CorpusStats()
    positives = _examples(request.positive, POSITIVE_LABEL, request, pos_stats)
    negatives = _examples(request.negative, NEGATIVE_LABEL, request, neg_stats)
    if len(positives) < 2 or len(negatives) < 2:
        raise KilnError(f"need at least 2 positive and 2 negative documents (got {len(positives)} and {len(negatives)})")
    rng.shuffle(positives)
    rng.shuffle(negatives)
    if request.balance:
        n = min(len(positives), len(negatives))
        positives, negatives = positives[:n], negatives[:n]

    def split(lines: list[str]) -> tuple[list[str], list[str]]:
        held = max(1, round(len(lines) * request.validation)) if request.validation > 0 else 0
        return lines[held:], lines[:held]

    train_pos, valid_pos = split(positives)
    train_neg, valid_neg = split(negatives)
    train = train_pos + train_neg
    rng.shuffle(train)
    echo(f"training on {len(train_pos):,} positive and {len(train_neg):,} negative documents, "
         f"validating on {len(valid_pos):,} + {len(valid_neg):,}")
    output = Path(request.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-clf-", dir=output.parent) as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(train) + "\n", encoding="utf-8")
        try:
            model = fasttext.train_supervised(
                input=str(train_file), epoch=request.epoch, lr=request.lr, wordNgrams=request.word_ngrams,
                dim=request.dim, minCount=request.min_count, bucket=request.bucket, loss="softmax",
                seed=request.seed, thread=1, verbose=0)
            if request.cutoff:
                echo(f"quantizing to the {request.cutoff:,} most useful input rows")
                model.quantize(input=str(train_file), qnorm=True, retrain=False, cutoff=request.cutoff, thread=1)
        except RuntimeError as e:
            if "nan" in str(e).lower():
                raise KilnError(f"fastText training diverged (NaN) at --lr {request.lr}: try a lower --lr "
                                f"or the default --bucket") from None
            raise
        tmp_model = Path(tmp) / "model.bin"
        model.save_model(str(tmp_model))
        os.replace(tmp_model, output)
    metrics: dict[str, Any] = {}
    valid = valid_pos + valid_neg
    if valid:
        texts = [line.split(" ", 1)[1] for line in valid]
        scores = positive_probabilities(model, texts, POSITIVE_LABEL)
        truth = [line.startswith(POSITIVE_LABEL) for line in valid]
        metrics = binary_metrics(truth, [s >= 0.5 for s in scores])
        metrics["threshold"] = 0.5
        echo(f"validation: precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, "
             f"F1 {metrics['f1']:.3f}, accuracy {metrics['accuracy']:.3f} on {metrics['examples']} documents")
    card = {
        "kind": "fasttext",
        "preparation": PREPARATION,
        "preparation_description": PREPARATION_DESCRIPTION,
        "positive_label": POSITIVE_LABEL,
        "negative_label": NEGATIVE_LABEL,
        "positive": {"files": pos_stats.files, "documents": pos_stats.documents},
        "negative": {"files": neg_stats.files, "documents": neg_stats.documents},
        "training": {"positive": len(train_pos), "negative": len(train_neg), "balanced": request.balance,
                     "epoch": request.epoch, "lr": request.lr, "wordNgrams": request.word_ngrams,
                     "dim": request.dim, "minCount": request.min_count, "bucket": request.bucket,
                     "quantized_cutoff": request.cutoff, "seed": request.seed,
                     "max_tokens": request.max_tokens},
        "validation": metrics,
        "model": {"file": output.name, "bytes": output.stat().st_size, "sha256": file_sha256(output)},
        "created": _now(),
    }
    write_card(output, card)
    return card
