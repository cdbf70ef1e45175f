"""Model evaluation: perplexity on held-out text, multiple-choice accuracy from next-token logits.

Two measurements a data team needs to tell whether a corpus made a model better, both for
base (not instruction-tuned) models and both computed the way the common harnesses do:

- **Perplexity** per file, source and language: every document is encoded with the model's
  own tokenizer as the trainer saw documents (BOS, then the text; `tokenize_pack` adds the
  same BOS), and each token after the BOS is predicted from the tokens before it in the same
  document. Documents longer than the model's context are cut into windows that overlap by
  one token, so every token is scored exactly once and always has at least one token of
  context. Perplexity is exp(total NLL / scored tokens); bits per byte (total NLL in bits /
  UTF-8 bytes of the text) is reported beside it because, unlike perplexity, it compares
  models with different tokenizers.
- **Multiple choice** on MMLU / C-Eval / CMMLU-style jsonl: a k-shot prompt (shots from a
  dev file, or the first k items of the test file, which are then not scored) ending in
  "Answer:" (答案： for Chinese), and the prediction is the answer letter whose token has
  the highest next-token logit: what OpenCompass and ColossalEval do for base models
  (no generation, no parsing of free text).

Works on CPU for small models and on a GPU for large ones (`device="auto"`: CUDA when there
is one; bf16 there, fp32 on CPU). Only torch and transformers are needed, no hub access:
MODEL is a local Hugging Face folder, such as a kiln training run's `final/`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from common.errors import InputError, KilnError

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")
LETTERS = "ABCDEFGHIJ"
LN2 = math.log(2)


# --------------------------------------------------------------------------- model


@dataclass
class LoadedModel:
    model: Any  # a causal LM: model(input_ids=..., attention_mask=...).logits
    tokenizer: Any  # a transformers tokenizer
    device: Any
    max_length: int
    path: str


def pick_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise KilnError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KilnError("--device cuda: no CUDA device is available here (use --device cpu)")
    return dev


def pick_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise KilnError(f"--dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return table[dtype]


def load_model(path: str | os.PathLike, device: str = "auto", dtype: str = "auto",
               max_length: int | None = None) -> LoadedModel:
    """A local Hugging Face causal LM folder (config.json + weights + tokenizer files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").is_file():
        hint = " (a kiln training run keeps it in RUN/final)" if (folder / "final" / "config.json").is_file() else ""
        raise InputError(f"{folder} is not a Hugging Face model folder: no config.json{hint}")
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: cannot load its tokenizer: {str(e).splitlines()[0]}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    except (OSError, ValueError) as e:
        raise InputError(f"{folder}: cannot load the model: {str(e).splitlines()[0]}") from None
    model.to(dev).eval()
    context = getattr(model.config, "max_position_embeddings", None) or 2048
    return LoadedModel(model=model, tokenizer=tokenizer, device=dev,
                       max_length=min(max_length or context, context), path=str(folder))


def _forward_logits(model: Any, input_ids, attention_mask):
    import torch

    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out


# --------------------------------------------------------------------------- reading text


@dataclass
class Doc:
    text: str
    source: str
    lang: str
    file: str


def guess_lang(text: str) -> str:
    """zh when Han characters outnumber Latin letters, en when there are Latin letters, else other."""
    han, latin = len(HAN.findall(text)), len(LATIN.findall(text))
    if han and han >= latin / 4:  # one Han character carries about as much as a short word
        return "zh"
    return "en" if latin else "other"


def _parquet_docs(files: Sequence[Path], name: str) -> Iterator[Doc]:
    import pyarrow.parquet as pq

    for file in files:
        parquet = pq.ParquetFile(file)
        columns = [c for c in ("text", "source", "lang") if c in parquet.schema_arrow.names]
        if "text" not in columns:
            raise InputError(f"{file}: no `text` column")
        for batch in parquet.iter_batches(columns=columns, batch_size=4096):
            data = batch.to_pydict()
            for i, text in enumerate(data["text"]):
                if not text or not text.strip():
                    continue
                source = (data.get("source") or [None] * (i + 1))[i] or name
                lang = (data.get("lang") or [None] * (i + 1))[i] or guess_lang(text)
                yield Doc(text, source, lang, name)


def read_eval_docs(path: str | os.PathLike, text_field: str = "text", txt_mode: str = "lines",
                   limit: int | None = None) -> list[Doc]:
    """Documents of a held-out file: .txt (one per line, or per paragraph / file with
    `txt_mode`), .jsonl[.gz|.zst|...] (`text_field`, and `source` / `lang` fields when there),
    .parquet, or a folder of parquet files such as a kiln stage's `data/`. Source defaults to
    the file's name, language to the script of the text."""
    from common.inputs import InputSpec
    from common.readers import _default_source, read_inputs

    path = Path(path)
    name = _default_source(str(path.name if path.is_file() else path.name or path))
    if path.is_dir() and path.name == "data" and path.parent.name:
        name = path.parent.name  # a stage's data/ folder: name it by its stage
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise InputError(f"{path}: a folder of held-out text must hold parquet files (a kiln stage's data/)")
        docs = list(_parquet_docs(files, name))
    elif not path.is_file():
        raise InputError(f"held-out text {path} does not exist")
    elif path.suffix == ".parquet":
        docs = list(_parquet_docs([path], name))
    else:
        spec = InputSpec(path=str(path), text_field=text_field, txt_mode=txt_mode, source=name, keep_meta=True)
        docs = []
        try:
            tables = list(read_inputs([spec]))
        except KilnError:
            raise
        for table in tables:
            data = table.select(["text", "meta", "reject_op"]).to_pydict()
            for text, meta, rejected in zip(data["text"], data["meta"], data["reject_op"]):
                if rejected is not None or not text or not text.strip():
                    continue
                fields = orjson.loads(meta) if meta else {}
                source = fields.get("source") if isinstance(fields.get("source"), str) else name
                lang = fields.get("lang") if isinstance(fields.get("lang"), str) else guess_lang(text)
                docs.append(Doc(text, source, lang, name))
    if not docs:
        raise InputError(f"{path}: no documents with text")
    return docs[:limit] if limit else docs


# --------------------------------------------------------------------------- perplexity


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per document as the trainer saw them: BOS (when the tokenizer has one), then
    the text without any other special token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [([bos] if bos is not None else []) + list(ids) for ids in encoded]


def windows(length: int, max_length: int) -> list[tuple[int, int]]:
    """(start, end) input windows over a sequence of `length` tokens: each window of at most
    `max_length` tokens predicts its tokens after the first, and the next window starts at the
    previous one's last token, so every token from position 1 is predicted exactly once."""
    if max_length < 2:
        raise KilnError("the model's context must be at least 2 tokens")
    spans, start = [], 0
    while start < length - 1:
        end = min(length, start + max_length)
        spans.append((start, end))
        start = end - 1
    return spans


def length_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so sequences of similar length share a batch (longest first) and each
    padded batch (rows x longest row) stays within `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * max(longest, 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def token_nll(loaded: LoadedModel, sequences: Sequence[Sequence[int]], batch_size: int = 8,
              batch_tokens: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Summed negative log-likelihood (nats) and number of scored tokens per sequence."""
    import torch

    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    jobs = []  # (sequence index, start, end)
    for i, seq in enumerate(sequences):
        jobs.extend((i, s, e) for s, e in windows(len(seq), loaded.max_length))
    nll = np.zeros(len(sequences), dtype=np.float64)
    count = np.zeros(len(sequences), dtype=np.int64)
    batches = [rows[k:k + batch_size] for rows in length_batches([e - s for _, s, e in jobs], batch_tokens)
               for k in range(0, len(rows), batch_size)]
    for rows in batches:
        batch = [jobs[j] for j in rows]
        width = max(e - s for _, s, e in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (i, s, e) in enumerate(batch):  # right padding: positions stay 0..n-1
            ids[row, : e - s] = torch.tensor(sequences[i][s:e], dtype=torch.long)
            mask[row, : e - s] = 1
        ids, mask = ids.to(loaded.device), mask.to(loaded.device)
        logits = _forward_logits(loaded.model, ids, mask).float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = ids[:, 1:]
        picked = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
        sums = picked.sum(dim=1).double().cpu().numpy()
        for row, (i, s, e) in enumerate(batch):
            nll[i] += sums[row]
            count[i] += e - s - 1
    return nll, count


@dataclass
class PplRow:
    group: str  # file, source, lang or all
    name: str
    docs: int
    tokens: int
    nll: float
    bytes: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll / self.tokens) if self.tokens else float("nan")

    @property
    def bits_per_byte(self) -> float:
        return self.nll / LN2 / self.bytes if self.bytes else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "docs": self.docs, "tokens": self.tokens,
                "nll": self.nll, "bytes": self.bytes, "ppl": self.ppl, "bits_per_byte": self.bits_per_byte,
                "mean_nll": self.nll / self.tokens if self.tokens else None}


def perplexity(loaded: LoadedModel, docs: Sequence[Doc], batch_size: int = 8) -> list[PplRow]:
    """Rows per file, source and language, and `all`, in that order."""
    sequences = encode_documents(loaded.tokenizer, [d.text for d in docs])
    nll, count = token_nll(loaded, sequences, batch_size=batch_size)
    groups: dict[tuple[str, str], list[float]] = {}
    for doc, n, c in zip(docs, nll, count):
        size = len(doc.text.encode("utf-8"))
        for key in (("file", doc.file), ("source", doc.source), ("lang", doc.lang), ("all", "all")):
            entry = groups.setdefault(key, [0, 0, 0.0, 0])
            entry[0] += 1
            entry[1] += int(c)
            entry[2] += float(n)
            entry[3] += size
    order = {"file": 0, "source": 1, "lang": 2, "all": 3}
    return [PplRow(g, name, int(d), int(t), float(s), int(b))
            for (g, name), (d, t, s, b) in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))]


# --------------------------------------------------------------------------- multiple choice


@dataclass
class Question:
    question: str
    options: list[str]
    answer: int | None  # index into options; None when the file has no answer (dev only)
    subject: str
    line: int


def _answer_index(value: Any, n: int, where: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InputError(f"{where}: answer must be a letter or an index, not {value!r}")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().upper() in LETTERS[:n] and len(value.strip()) == 1:
        index = LETTERS.index(value.strip().upper())
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    else:
        raise InputError(f"{where}: answer {value!r} is not one of {', '.join(LETTERS[:n])} or an index")
    if not 0 <= index < n:
        raise InputError(f"{where}: answer {value!r} is out of range for {n} options")
    return index


def parse_question(record: Any, where: str, default_subject: str) -> Question:
    """One item in MMLU form (`question`, `choices`, `answer` index), C-Eval form (`question`,
    `A`..`D`, `answer` letter) or CMMLU form (`Question`, `A`..`D`, `Answer`)."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: an item must be a JSON object")
    question = record.get("question", record.get("Question"))
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"{where}: no `question` text")
    if isinstance(record.get("choices"), list):
        options = [str(o) for o in record["choices"]]
    else:
        options = []
        for letter in LETTERS:
            if letter not in record:
                break
            options.append(str(record[letter]))
    if len(options) < 2:
        raise InputError(f"{where}: needs `choices` (a list) or options under the keys A, B, C, ...")
    answer = _answer_index(record.get("answer", record.get("Answer", record.get("label"))), len(options), where)
    subject = record.get("subject") or record.get("Subject") or default_subject
    return Question(question.strip(), options, answer, str(subject), int(where.rsplit(":", 1)[-1]))


def read_questions(path: str | os.PathLike) -> list[Question]:
    from common.inputs import InputSpec
    from common.readers import expand_inputs

    path = Path(path)
    if not path.is_file():
        raise InputError(f"multiple-choice file {path} does not exist")
    subject = re.sub(r"_(dev|val|test|train)$", "", path.name.split(".")[0])
    file = expand_inputs([InputSpec(path=str(path), format="jsonl")])[0]
    from common.readers import _iter_lines, _open

    questions = []
    with _open(file) as stream:
        for number, line in _iter_lines(stream):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                raise InputError(f"{path}:{number}: not valid JSON: {e}") from None
            questions.append(parse_question(record, f"{path}:{number}", subject))
    if not questions:
        raise InputError(f"{path}: no questions")
    return questions


def is_chinese(question: Question) -> bool:
    return bool(HAN.search(question.question + "".join(question.options)))


def _subject_name(subject: str) -> str:
    return subject.replace("_", " ")


def format_item(q: Question, answer: bool) -> str:
    zh = is_chinese(q)
    lines = [q.question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(q.options)]
    cue = "答案：" if zh else "Answer:"
    if answer:
        gap = "" if zh else " "
        return "\n".join(lines) + f"\n{cue}{gap}{LETTERS[q.answer]}\n\n"
    return "\n".join(lines) + f"\n{cue}"


def header(q: Question) -> str:
    """The instruction line OpenCompass and C-Eval use for base models."""
    if is_chinese(q):
        return f"以下是中国关于{_subject_name(q.subject)}考试的单项选择题，请选出其中的正确答案。\n\n"
    return f"The following are multiple choice questions (with answers) about {_subject_name(q.subject)}.\n\n"


def build_prompt(q: Question, shots: Sequence[Question]) -> str:
    return header(q) + "".join(format_item(s, answer=True) for s in shots) + format_item(q, answer=False)


def letter_ids(tokenizer: Any, prompt: str, n: int, chinese: bool) -> list[int]:
    """The token each answer letter starts with when it follows `prompt` (" A" after
    "Answer:", "A" after "答案："), found by encoding the prompt with the letter and taking the
    first token past the prompt's own tokens."""
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in LETTERS[:n]:
        full = tokenizer(prompt + ("" if chinese else " ") + letter, add_special_tokens=False)["input_ids"]
        k = 0
        while k < min(len(base), len(full)) and base[k] == full[k]:
            k += 1
        if k >= len(full):
            raise KilnError(f"the tokenizer encodes answer letter {letter!r} into nothing")
        ids.append(full[k] if k == len(base) else full[-1])
    return ids


@dataclass
class McResult:
    file: str
    k: int
    total: int = 0
    correct: int = 0
    skipped_shots: int = 0  # items used as shots (not scored) when no dev file is given
    truncated: int = 0  # prompts that lost shots or were cut to fit the context
    by_subject: dict[str, list[int]] = field(default_factory=dict)  # subject -> [correct, total]
    predictions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.total if self.total else None

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "k": self.k, "questions": self.total, "correct": self.correct,
                "accuracy": self.accuracy, "shots_taken_from_file": self.skipped_shots,
                "truncated_prompts": self.truncated,
                "by_subject": {s: {"correct": c, "questions": t, "accuracy": c / t if t else None}
                               for s, (c, t) in sorted(self.by_subject.items())}}


def choose_shots(q: Question, pool: Sequence[Question], k: int) -> list[Question]:
    """The first k answered items of the same subject, else of the pool."""
    if k <= 0:
        return []
    answered = [p for p in pool if p.answer is not None and p is not q]
    same = [p for p in answered if p.subject == q.subject]
    return (same if len(same) >= k else answered)[:k]


def multiple_choice(loaded: LoadedModel, path: str | os.PathLike, k: int = 5, dev: str | os.PathLike | None = None,
                    batch_size: int = 8, limit: int | None = None) -> McResult:
    """Accuracy on one file; with no `dev`, its first k items are the shots and not scored."""
    import torch

    questions = read_questions(path)
    result = McResult(file=str(path), k=k)
    if dev is not None:
        pool = read_questions(dev)
    else:
        pool, questions = questions[:k], questions[k:]
        result.skipped_shots = len(pool)
    if any(p.answer is None for p in pool) and k:
        pool = [p for p in pool if p.answer is not None]
    unanswered = [q for q in questions if q.answer is None]
    if unanswered:
        raise InputError(f"{path}:{unanswered[0].line}: no answer to score against (a test split without "
                         "answers cannot be scored locally)")
    if limit:
        questions = questions[:limit]
    if not questions:
        raise InputError(f"{path}: no questions left to score after taking {k} shots from it")
    tokenizer = loaded.tokenizer
    bos = getattr(tokenizer, "bos_token_id", None)
    items = []
    for q in questions:
        shots = choose_shots(q, pool, k)
        cut = False
        while True:
            prompt = build_prompt(q, shots)
            ids = ([bos] if bos is not None else []) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) <= loaded.max_length or not shots:
                break
            shots, cut = shots[:-1], True  # fewer shots before cutting the question itself
        if len(ids) > loaded.max_length:
            ids, cut = ids[-loaded.max_length:], True
        result.truncated += cut
        items.append((q, ids, letter_ids(tokenizer, prompt, len(q.options), is_chinese(q))))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(items)), key=lambda i: -len(items[i][1]))
    for lo in range(0, len(order), batch_size):
        batch = [items[i] for i in order[lo:lo + batch_size]]
        width = max(len(ids) for _, ids, _ in batch)
        ids_t = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, ids, _) in enumerate(batch):
            ids_t[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        logits = _forward_logits(loaded.model, ids_t.to(loaded.device), mask.to(loaded.device)).float().cpu()
        for row, (q, ids, cands) in enumerate(batch):
            last = logits[row, len(ids) - 1]
            scores = [float(last[c]) for c in cands]
            pred = int(np.argmax(scores))
            ok = pred == q.answer
            result.total += 1
            result.correct += ok
            entry = result.by_subject.setdefault(q.subject, [0, 0])
            entry[0] += ok
            entry[1] += 1
            result.predictions.append({"line": q.line, "subject": q.subject, "answer": LETTERS[q.answer],
                                       "predicted": LETTERS[pred], "scores": scores})
    result.predictions.sort(key=lambda p: p["line"])
    return result


# --------------------------------------------------------------------------- all together


@dataclass
class EvalRequest:
    model: str
    texts: list[str] = field(default_factory=list)
    choice_files: list[str] = field(default_factory=list)
    dev: list[str] = field(default_factory=list)  # one per choice file, or one for all, or none
    k: int = 5
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    max_length: int | None = None
    max_docs: int | None = None
    max_questions: int | None = None
    text_field: str = "text"
    txt_mode: str = "lines"


def run_eval(request: EvalRequest, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Every measurement of a request, as one JSON-able dict."""
    if not request.texts and not request.choice_files:
        raise KilnError("nothing to evaluate: give held-out text (--text) and/or multiple-choice files (--choice)")
    if request.dev and len(request.dev) not in (1, len(request.choice_files)):
        raise KilnError(f"--dev: give one dev file for all, or one per --choice file ({len(request.choice_files)})")
    if request.k < 0:
        raise KilnError("-k must be >= 0")
    # Read everything first: a bad file fails before a large model is loaded.
    docs = [d for path in request.texts
            for d in read_eval_docs(path, request.text_field, request.txt_mode, request.max_docs)]
    for path in request.choice_files + request.dev:
        read_questions(path)
    import time

    started = time.perf_counter()
    loaded = loaded or load_model(request.model, request.device, request.dtype, request.max_length)
    out: dict[str, Any] = {"model": request.model, "device": str(loaded.device),
                           "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
                           "max_length": loaded.max_length,
                           "parameters": sum(p.numel() for p in loaded.model.parameters())}
    if docs:
        out["perplexity"] = [r.to_json() for r in perplexity(loaded, docs, request.batch_size)]
    if request.choice_files:
        results = []
        for i, path in enumerate(request.choice_files):
            dev = request.dev[0] if len(request.dev) == 1 else (request.dev[i] if request.dev else None)
            results.append(multiple_choice(loaded, path, request.k, dev, request.batch_size,
                                           request.max_questions).to_json())
        out["multiple_choice"] = results
    out["seconds"] = round(time.perf_counter() - started, 2)
    return out


def print_results(results: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"model {results['model']} ({results['parameters']:,} parameters, {results['device']}, "
                  f"{results['dtype']}, context {results['max_length']})", highlight=False)
    if results.get("perplexity"):
        t = Table(title="perplexity (held-out text)", title_justify="left")
        for name in ("group", "name", "docs", "tokens", "ppl", "bits/byte"):
            t.add_column(name, justify="right" if name not in ("group", "name") else "left")
        for r in results["perplexity"]:
            t.add_row(r["group"], r["name"], f"{r['docs']:,}", f"{r['tokens']:,}", f"{r['ppl']:.2f}",
                      f"{r['bits_per_byte']:.4f}")
        console.print(t)
    if results.get("multiple_choice"):
        t = Table(title="multiple choice (next-token logits over the answer letters)", title_justify="left")
        for name in ("file", "shots", "questions", "correct", "accuracy"):
            t.add_column(name, justify="left" if name == "file" else "right")
        for r in results["multiple_choice"]:
            acc = f"{r['accuracy']:.1%}" if r["accuracy"] is not None else "-"
            t.add_row(r["file"], str(r["k"]), f"{r['questions']:,}", f"{r['correct']:,}", acc)
        console.print(t)
