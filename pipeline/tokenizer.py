"""Tokenizers for kiln: train a SentencePiece model, expand it with Chinese, export it for
Hugging Face, and measure compression.

Why SentencePiece: LLaMA-family models (the ones Ziya2 and Colossal-LLaMA-2 continue to
pretrain) ship a SentencePiece BPE `tokenizer.model`, and both projects grow *that* vocabulary
with Chinese pieces rather than replace it, so that every old token keeps its id and its
trained embedding. kiln does the same:

- `train_sentencepiece` trains a model with LLaMA's settings (byte fallback, digits split,
  no normalisation: text normalisation is the pipeline's job, whitespace kept as is).
- `expand_sentencepiece` appends the most frequent Chinese characters and words that a base
  model lacks to its ModelProto, as Chinese-LLaMA's and Colossal-LLaMA-2's merge scripts do,
  and reports tokens per character before and after on held-out Chinese and English text.
  New pieces are pure CJK strings, so English text encodes to exactly the same ids as before.
- `hf_tokenizer` converts a SentencePiece model to a `tokenizers.Tokenizer` that produces the
  same ids (byte fallback and whitespace included; tests check it on real text), and
  `save_hf_folder` writes the folder `AutoTokenizer.from_pretrained` loads.

The pipeline's `tokenize_pack` stage and the trainer only ever read the Hugging Face folder;
the `.model` is kept beside it for further expansion.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import InputError, KilnError

MODEL_FILE = "tokenizer.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
EXPANSION_REPORT = "expansion.json"
SPACE = "▁"  # SentencePiece's whitespace symbol

# SentencePiece ModelProto piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
# Chinese punctuation (CJK symbols, full-width forms) is as frequent in Chinese text as the
# commonest characters, and byte-falls back to 3 tokens in an English-only vocabulary.
CJK_PUNCT = r"\u3000-\u303f\uff00-\uffef"
_CHAR_CANDIDATE = re.compile(f"[{HAN}{CJK_PUNCT}]")
_HAN_WORD = re.compile(f"[{HAN}]+")
_HAN_CHAR = re.compile(f"[{HAN}]")
_LATIN = re.compile(r"[A-Za-z]")
_LONG_LINE_SPLIT = re.compile(r"(?<=[。！？!?；;.])")


# --------------------------------------------------------------------------- reading text


def read_texts(paths: Sequence[str], text_field: str = "text", txt_mode: str = "lines") -> Iterator[str]:
    """Documents of text files (.txt one per line or paragraph or file, .jsonl[.gz|.zst|...]
    with `text_field`, .parquet such as a kiln stage's `data/`), through kiln's own readers.
    Unusable records are skipped (the pipeline, not tokenizer training, accounts for them)."""
    from common.inputs import InputSpec
    from common.readers import read_inputs
    from operators.base import REJECT_OP

    specs = [InputSpec(path=str(p), text_field=text_field, txt_mode=txt_mode, keep_meta=False) for p in paths]
    for table in read_inputs(specs):
        texts = table.column("text").to_pylist()
        rejected = table.column(REJECT_OP).to_pylist()
        for text, reject in zip(texts, rejected):
            if reject is None and text:
                yield text


def training_sentences(texts: Iterable[str], max_chars: int = 4000) -> Iterator[str]:
    """Lines for SentencePiece, which skips sentences over `max_sentence_length` bytes: long
    lines are cut at sentence ends (or hard, as a last resort) into pieces of <= max_chars."""
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if len(line) <= max_chars:
                yield line
                continue
            chunk = ""
            for part in _LONG_LINE_SPLIT.split(line):
                while len(part) > max_chars:
                    if chunk:
                        yield chunk
                        chunk = ""
                    yield part[:max_chars]
                    part = part[max_chars:]
                if len(chunk) + len(part) > max_chars:
                    yield chunk
                    chunk = ""
                chunk += part
            if chunk:
                yield chunk


# --------------------------------------------------------------------------- SentencePiece


def load_model_proto(path: str | os.PathLike):
    """A SentencePiece ModelProto, or a one-line error naming the file."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise InputError(f"no SentencePiece model at {path}")
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # protobuf raises DecodeError, a plain Exception subclass
        raise InputError(f"{path} is not a SentencePiece model: {e}") from None
    if not proto.pieces:
        raise InputError(f"{path} is not a SentencePiece model (no pieces)")
    return proto


def sentencepiece_processor(model: str | os.PathLike | bytes):
    import sentencepiece as spm

    if isinstance(model, bytes):
        return spm.SentencePieceProcessor(model_proto=model)
    path = Path(model)
    return spm.SentencePieceProcessor(model_file=str(path / MODEL_FILE if path.is_dir() else path))


@dataclass
class TrainOptions:
    vocab_size: int = 32000
    model_type: str = "bpe"  # bpe | unigram
    character_coverage: float = 0.9995
    max_sentences: int = 2_000_000  # SentencePiece samples this many lines
    seed: int = 0
    num_threads: int = 0  # 0: all CPUs
    hard_vocab_limit: bool = True  # False: vocab_size is an upper bound (small corpora)


def train_sentencepiece(texts: Iterable[str], out_dir: str | os.PathLike, options: TrainOptions) -> Path:
    """Train a SentencePiece model with LLaMA's settings on `texts` and write
    `out_dir/tokenizer.model` plus the Hugging Face folder files."""
    import sentencepiece as spm

    if options.model_type not in ("bpe", "unigram"):
        raise KilnError(f"model type must be bpe or unigram, not {options.model_type!r}")
    sentences = training_sentences(texts)
    first = next(sentences, None)
    if first is None:
        raise InputError("no text to train a tokenizer on (the inputs are empty)")
    sentences = _chain([first], sentences)
    spm.set_random_generator_seed(options.seed)
    spm.set_min_log_level(2)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            model_type=options.model_type,
            vocab_size=options.vocab_size,
            hard_vocab_limit=options.hard_vocab_limit,
            character_coverage=options.character_coverage,
            input_sentence_size=options.max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=16384,
            # LLaMA's choices: unknown characters become UTF-8 byte pieces instead of <unk>,
            # digits are single tokens, text is taken as is (no NFKC, spaces kept).
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            add_dummy_prefix=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=options.num_threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise KilnError(f"SentencePiece training failed: {str(e).strip().splitlines()[-1]}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(model.getvalue())
    save_hf_folder(out / MODEL_FILE, out)
    return out / MODEL_FILE


def _chain(*iterables: Iterable[str]) -> Iterator[str]:
    for it in iterables:
        yield from it


# --------------------------------------------------------------------------- Hugging Face export


def _special_pieces(proto) -> dict[str, str | None]:
    pieces = [p.piece for p in proto.pieces]
    spec = proto.trainer_spec

    def piece(index: int) -> str | None:
        return pieces[index] if 0 <= index < len(pieces) else None

    return {"unk_token": piece(spec.unk_id), "bos_token": piece(spec.bos_id),
            "eos_token": piece(spec.eos_id), "pad_token": piece(spec.pad_id)}


def hf_tokenizer(model: str | os.PathLike | Any):
    """A `tokenizers.Tokenizer` that encodes exactly as the SentencePiece model does.

    BPE: SentencePiece merges, inside each whitespace-delimited word, the adjacent pair whose
    union is the highest-scoring piece; a `tokenizers` BPE with one merge per way of splitting
    each piece into two pieces, ranked by the piece's score, does the same. Unigram: the same
    pieces and scores, Viterbi in both. Normalisation mirrors the model's normaliser spec
    (precompiled NFKC map if any, extra-whitespace removal, the dummy `▁` prefix, spaces to `▁`)
    and needs no pre-tokenizer, so whitespace-only pieces (LLaMA has `▁▁`, `▁▁▁▁`...) work.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

    proto = model if hasattr(model, "pieces") else load_model_proto(model)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    unk = pieces[spec.unk_id][0] if 0 <= spec.unk_id < len(pieces) else None
    if spec.model_type == 2:  # BPE
        merges: list[tuple[str, str]] = []
        for i in sorted(range(len(pieces)), key=lambda i: (-pieces[i][1], i)):
            piece, _, kind = pieces[i]
            if kind not in (NORMAL, USER_DEFINED) or len(piece) < 2:
                continue
            splits = sorted((vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:])
                            for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab)
            merges.extend((left, right) for _, _, left, right in splits)
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                                         byte_fallback=spec.byte_fallback))
    elif spec.model_type == 1:  # unigram
        tokenizer = Tokenizer(models.Unigram([(p, s) for p, s, _ in pieces], unk_id=spec.unk_id,
                                             byte_fallback=spec.byte_fallback))
    else:
        raise KilnError("only BPE and unigram SentencePiece models can be exported")
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    steps.append(normalizers.Replace(" ", SPACE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(decode)
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False)
                                  for p, _, kind in pieces if kind in (UNKNOWN, CONTROL)])
    user = [AddedToken(p, special=False, normalized=False) for p, _, kind in pieces if kind == USER_DEFINED]
    if user:
        tokenizer.add_tokens(user)
    special = _special_pieces(proto)
    bos = special["bos_token"]
    if bos is not None:  # like LLaMA: `tokenizer(text)` starts with <s>
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    return tokenizer


def save_hf_folder(model_path: str | os.PathLike, out_dir: str | os.PathLike, model_max_length: int = 1 << 20) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json for the
    SentencePiece model (copied in as tokenizer.model), loadable with AutoTokenizer."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(model_path)
    proto = load_model_proto(model_path)
    if model_path.resolve() != (out / MODEL_FILE).resolve():
        shutil.copyfile(model_path, out / MODEL_FILE)
    hf_tokenizer(proto).save(str(out / "tokenizer.json"))
    special = {k: v for k, v in _special_pieces(proto).items() if v is not None}
    config = {
        # The generic fast class loads tokenizer.json as is; LlamaTokenizer would rebuild the
        # normaliser and change how leading spaces encode.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": "bos_token" in special,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    return out


def prepare_hf_folder(path: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a tokenizer into `dest` as a Hugging Face folder: from a folder holding
    tokenizer.json (or only tokenizer.model), a tokenizer.json file, or a .model file."""
    path = Path(path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            for name in (*HF_FILES, MODEL_FILE):
                if (path / name).is_file():
                    shutil.copyfile(path / name, dest / name)
            return dest
        if (path / MODEL_FILE).is_file():
            return save_hf_folder(path / MODEL_FILE, dest)
        raise InputError(f"tokenizer folder {path} has neither tokenizer.json nor {MODEL_FILE}")
    if not path.is_file():
        raise InputError(f"tokenizer {path} does not exist (train one with `kiln tokenizer train`)")
    if path.suffix == ".json":
        shutil.copyfile(path, dest / "tokenizer.json")
        return dest
    return save_hf_folder(path, dest)


# --------------------------------------------------------------------------- expansion


def script_of(text: str) -> str | None:
    """'zh', 'en' or None (mixed, other) for held-out evaluation sets."""
    letters = sum(1 for ch in text if not ch.isspace())
    if not letters:
        return None
    han = len(_HAN_CHAR.findall(text))
    latin = len(_LATIN.findall(text))
    if han / letters >= 0.3:
        return "zh"
    if han == 0 and latin / letters >= 0.5:
        return "en"
    return None


@dataclass
class Candidates:
    chars: list[tuple[str, int]]  # missing characters, most frequent first
    words: list[tuple[str, int]]  # missing multi-character Chinese words, most frequent first
    counted_chars: int  # characters of text the counts come from


def count_candidates(texts: Iterable[str], vocab: set[str], *, words: bool = True, min_char_count: int = 2,
                     min_word_count: int = 5, word_sample_chars: int = 5_000_000) -> Candidates:
    """Chinese characters (and CJK punctuation) and jieba words of `texts` missing from
    `vocab`, by frequency. Words are counted on the first `word_sample_chars` characters of
    Chinese text only (jieba is the slow part)."""
    char_counts: collections.Counter[str] = collections.Counter()
    word_counts: collections.Counter[str] = collections.Counter()
    counted = 0
    worded = 0
    if words:
        import jieba

        jieba.setLogLevel(logging.WARNING)
    for text in texts:
        counted += len(text)
        char_counts.update(_CHAR_CANDIDATE.findall(text))
        if words and worded < word_sample_chars and _HAN_CHAR.search(text):
            worded += len(text)
            for word in jieba.lcut(text, HMM=False):
                if len(word) > 1 and _HAN_WORD.fullmatch(word):
                    word_counts[word] += 1
    chars = sorted(((c, n) for c, n in char_counts.items() if n >= min_char_count and c not in vocab),
                   key=lambda cn: (-cn[1], cn[0]))
    found = sorted(((w, n) for w, n in word_counts.items() if n >= min_word_count and w not in vocab),
                   key=lambda wn: (-wn[1], wn[0]))
    return Candidates(chars=chars, words=found, counted_chars=counted)


def choose_pieces(candidates: Candidates, vocab: set[str], add: int, bpe: bool,
                  max_chars: int | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Characters first (a missing character costs 3 byte tokens), then words, `add` in all.
    A BPE model reaches a multi-character piece only by merging two adjacent pieces, so a word
    is taken only once some split of it into two known pieces exists (retried as more pieces
    arrive); a unigram model only needs its characters."""
    chars = candidates.chars[: add if max_chars is None else min(add, max_chars)]
    known = set(vocab) | {c for c, _ in chars}
    chosen_words: list[tuple[str, int]] = []
    pending = [wn for wn in candidates.words if all(ch in known for ch in wn[0])]
    room = add - len(chars)
    while room > 0 and pending:
        still = []
        for word, n in pending:
            if room <= 0:
                break
            if not bpe or any(word[:k] in known and word[k:] in known for k in range(1, len(word))):
                chosen_words.append((word, n))
                known.add(word)
                room -= 1
            else:
                still.append((word, n))
        if len(still) == len(pending):
            break
        pending = still
    return chars, chosen_words


@dataclass
class Compression:
    texts: int = 0
    chars: int = 0
    base_tokens: int = 0
    expanded_tokens: int = 0

    @property
    def base(self) -> float | None:
        return self.base_tokens / self.chars if self.chars else None

    @property
    def expanded(self) -> float | None:
        return self.expanded_tokens / self.chars if self.chars else None


def tokens_per_char(processor, texts: Sequence[str]) -> tuple[int, int]:
    """(tokens, characters) of `texts` under a SentencePiece processor, without BOS/EOS."""
    if not texts:
        return 0, 0
    return sum(len(ids) for ids in processor.encode(list(texts))), sum(len(t) for t in texts)


@dataclass
class ExpansionReport:
    base: str
    base_vocab: int
    vocab: int
    added_chars: int
    added_words: int
    model_type: str
    corpus_chars: int
    compression: dict[str, dict[str, Any]] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def table(self) -> str:
        """Colossal-LLaMA-2's table: tokens per character, lower is better."""
        lines = [f"{'held-out text':<16}{'texts':>8}{'chars':>12}{'base ' + format(self.base_vocab, ','):>18}"
                 f"{'expanded ' + format(self.vocab, ','):>20}"]
        for lang, row in self.compression.items():
            if not row["chars"]:
                lines.append(f"{lang + ' tokens/char':<16}{0:>8}{0:>12}{'n/a':>18}{'n/a':>20}")
                continue
            lines.append(f"{lang + ' tokens/char':<16}{row['texts']:>8,}{row['chars']:>12,}"
                         f"{row['base']:>18.3f}{row['expanded']:>20.3f}")
        return "\n".join(lines)


def expand_sentencepiece(base: str | os.PathLike, corpus: Iterable[str], out_dir: str | os.PathLike, add: int, *,
                         words: bool = True, max_chars: int | None = None, min_char_count: int = 2,
                         min_word_count: int = 5, heldout_every: int = 10,
                         eval_zh: Sequence[str] | None = None, eval_en: Sequence[str] | None = None,
                         word_sample_chars: int = 5_000_000, max_eval_texts: int = 5000) -> ExpansionReport:
    """Append up to `add` Chinese pieces missing from the `base` SentencePiece model, write
    the expanded model and its Hugging Face folder to `out_dir`, and measure compression.

    Every `heldout_every`-th corpus document is held out from counting and, by script, used
    as Chinese or English evaluation text (unless `eval_zh` / `eval_en` are given). New pieces
    get scores below every existing one (BPE: later merges, most frequent first, so existing
    merges and English are untouched; unigram: the log frequency, capped by the best score).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if add < 1:
        raise KilnError("--add must be at least 1")
    proto = load_model_proto(base)
    base_vocab = len(proto.pieces)
    vocab = {p.piece for p in proto.pieces}
    bpe = proto.trainer_spec.model_type == 2
    heldout = {"zh": list(eval_zh or []), "en": list(eval_en or [])}
    take = {lang: not texts for lang, texts in heldout.items()}

    def counted() -> Iterator[str]:
        for i, text in enumerate(corpus):
            if heldout_every and i % heldout_every == heldout_every - 1 and any(take.values()):
                lang = script_of(text)
                if lang and take[lang] and len(heldout[lang]) < max_eval_texts:
                    heldout[lang].append(text)
                    continue
            yield text

    candidates = count_candidates(counted(), vocab, words=words, min_char_count=min_char_count,
                                  min_word_count=min_word_count, word_sample_chars=word_sample_chars)
    if candidates.counted_chars == 0:
        raise InputError("the expansion corpus has no text")
    if proto.normalizer_spec.precompiled_charsmap:
        # A base that normalises (NFKC) never sees, say, full-width punctuation: such pieces
        # would be dead weight.
        base_normalize = sentencepiece_processor(base).normalize

        def survives(piece: str) -> bool:
            return base_normalize(piece).removeprefix(SPACE) == piece

        candidates.chars = [cn for cn in candidates.chars if survives(cn[0])]
        candidates.words = [wn for wn in candidates.words if survives(wn[0])]
    chars, chosen_words = choose_pieces(candidates, vocab, add, bpe, max_chars)
    if not chars and not chosen_words:
        raise KilnError("the corpus has no Chinese characters or words missing from the base vocabulary "
                        "(lower --min-char-count, or give more Chinese text)")
    normal_scores = [p.score for p in proto.pieces if p.type == NORMAL]
    lowest = min(normal_scores, default=0.0)
    highest = max(normal_scores, default=0.0)
    total = max(1, candidates.counted_chars)
    for rank, (piece, count) in enumerate([*chars, *chosen_words]):
        new = pb.ModelProto().SentencePiece()
        new.piece = piece
        new.type = NORMAL
        new.score = lowest - 1.0 - rank if bpe else min(highest, math.log(count / total))
        proto.pieces.append(new)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(proto.SerializeToString())
    save_hf_folder(out / MODEL_FILE, out)

    base_sp = sentencepiece_processor(base)
    new_sp = sentencepiece_processor(out / MODEL_FILE)
    report = ExpansionReport(base=str(base), base_vocab=base_vocab, vocab=len(proto.pieces),
                             added_chars=len(chars), added_words=len(chosen_words),
                             model_type="bpe" if bpe else "unigram", corpus_chars=candidates.counted_chars,
                             examples={"chars": [c for c, _ in chars[:30]], "words": [w for w, _ in chosen_words[:30]]})
    for lang in ("zh", "en"):
        texts = heldout[lang][:max_eval_texts]
        base_tokens, n_chars = tokens_per_char(base_sp, texts)
        new_tokens, _ = tokens_per_char(new_sp, texts)
        row = Compression(len(texts), n_chars, base_tokens, new_tokens)
        report.compression[lang] = {"texts": row.texts, "chars": row.chars, "base_tokens": row.base_tokens,
                                    "expanded_tokens": row.expanded_tokens, "base": row.base,
                                    "expanded": row.expanded}
    (out / EXPANSION_REPORT).write_text(json.dumps(asdict(report), indent=2, ensure_ascii=False) + "\n")
    return report


def check_hf_export(folder: str | os.PathLike, texts: Sequence[str]) -> tuple[int, int]:
    """(texts whose ids differ between the SentencePiece model and the exported
    tokenizer.json, texts checked): the export is only trusted when the first is 0."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    sp = sentencepiece_processor(folder / MODEL_FILE)
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = list(texts)
    if not texts:
        return 0, 0
    expected = sp.encode(texts)
    got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    return sum(a != b for a, b in zip(expected, got)), len(texts)
