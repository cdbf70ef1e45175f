"""`kiln tokenizer train|expand|export`: SentencePiece tokenizers with a Hugging Face twin.

- train:  a SentencePiece BPE or unigram model with LLaMA's settings on your text.
- expand: add the most frequent Chinese characters and words a base model (e.g. LLaMA's
          tokenizer.model) lacks, and print tokens per character before and after.
- export: the Hugging Face folder (tokenizer.json ...) of an existing SentencePiece model.

Every command writes DIR/tokenizer.model and the files `AutoTokenizer.from_pretrained(DIR)`
loads, and checks that both encode a sample of text to the same ids.
"""

from __future__ import annotations

import argparse
import itertools

SAMPLE = 500  # texts used to check the Hugging Face export against SentencePiece


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenizer", help="train, expand (Chinese) or export a SentencePiece tokenizer",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def inputs(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--text-field", default="text", help="JSON field of the text (jsonl, parquet)")
        parser.add_argument("--txt-mode", choices=["lines", "paragraphs", "file"], default="lines",
                            help="how .txt files split into documents (default: lines)")

    t = sub.add_parser("train", help="train a SentencePiece model (+ HF folder)")
    t.add_argument("inputs", nargs="+", help="text files or folders: .txt, .jsonl[.gz|.zst], .parquet")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--vocab-size", type=int, default=32000)
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    t.add_argument("--character-coverage", type=float, default=0.9995,
                   help="share of characters covered by pieces; the rest falls back to bytes")
    t.add_argument("--max-sentences", type=int, default=2_000_000, help="lines SentencePiece samples")
    t.add_argument("--soft-vocab-limit", action="store_true",
                   help="treat --vocab-size as an upper bound (a small corpus yields fewer pieces)")
    t.add_argument("--seed", type=int, default=0)
    inputs(t)
    t.set_defaults(handler=handle_train)

    e = sub.add_parser("expand", help="add Chinese characters and words missing from a base model")
    e.add_argument("--base", required=True, help="base SentencePiece model (tokenizer.model, or its folder)")
    e.add_argument("--corpus", nargs="+", required=True, help="Chinese (or mixed) text files or folders")
    e.add_argument("--add", type=int, required=True, help="pieces to add (characters first, then words)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--no-words", action="store_true", help="add characters only (Ziya2 style)")
    e.add_argument("--max-chars", type=int, help="add at most this many characters")
    e.add_argument("--min-char-count", type=int, default=2)
    e.add_argument("--min-word-count", type=int, default=5)
    e.add_argument("--word-sample-chars", type=int, default=5_000_000,
                   help="characters of Chinese text segmented with jieba to count words")
    e.add_argument("--eval-zh", nargs="+", help="held-out Chinese text (default: every 10th corpus document)")
    e.add_argument("--eval-en", nargs="+", help="held-out English text (default: English corpus documents)")
    inputs(e)
    e.set_defaults(handler=handle_expand)

    x = sub.add_parser("export", help="write the Hugging Face folder of a SentencePiece model")
    x.add_argument("model", help="SentencePiece tokenizer.model")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--check", nargs="*", default=[], help="text files to compare the two encoders on")
    inputs(x)
    x.set_defaults(handler=handle_export)


def _report_check(folder, texts) -> int:
    from pipeline.tokenizer import check_hf_export

    bad, checked = check_hf_export(folder, texts)
    if not checked:
        return 0
    if bad:
        print(f"WARNING: the Hugging Face tokenizer encodes {bad} of {checked} sample texts differently "
              f"from SentencePiece; use tokenizer.model for exact ids")
        return 1
    print(f"checked: tokenizer.json and tokenizer.model give the same ids on {checked} sample texts")
    return 0


def handle_train(args: argparse.Namespace) -> int:
    from pipeline.tokenizer import TrainOptions, load_model_proto, read_texts, train_sentencepiece

    options = TrainOptions(vocab_size=args.vocab_size, model_type=args.model_type,
                           character_coverage=args.character_coverage, max_sentences=args.max_sentences,
                           seed=args.seed, hard_vocab_limit=not args.soft_vocab_limit)
    path = train_sentencepiece(read_texts(args.inputs, args.text_field, args.txt_mode), args.out, options)
    pieces = len(load_model_proto(path).pieces)
    print(f"trained a {args.model_type} SentencePiece model, {pieces:,} pieces: {path}")
    print(f"Hugging Face folder: {args.out} (AutoTokenizer.from_pretrained)")
    return _report_check(args.out, itertools.islice(read_texts(args.inputs, args.text_field, args.txt_mode), SAMPLE))


def handle_expand(args: argparse.Namespace) -> int:
    from pipeline.tokenizer import expand_sentencepiece, read_texts

    def texts(paths):
        return list(read_texts(paths, args.text_field, args.txt_mode)) if paths else None

    report = expand_sentencepiece(
        args.base, read_texts(args.corpus, args.text_field, args.txt_mode), args.out, args.add,
        words=not args.no_words, max_chars=args.max_chars, min_char_count=args.min_char_count,
        min_word_count=args.min_word_count, word_sample_chars=args.word_sample_chars,
        eval_zh=texts(args.eval_zh), eval_en=texts(args.eval_en))
    print(f"expanded {report.base} from {report.base_vocab:,} to {report.vocab:,} pieces: "
          f"{report.added_chars:,} characters, {report.added_words:,} words -> {args.out}")
    if report.examples.get("words"):
        print("most frequent new words: " + " ".join(report.examples["words"][:15]))
    print()
    print(report.table())
    en = report.compression.get("en", {})
    if en.get("chars") and en["expanded"] > en["base"]:
        print("WARNING: English compression got worse")
        return 1
    sample = [*itertools.islice(read_texts(args.corpus, args.text_field, args.txt_mode), SAMPLE)]
    return _report_check(args.out, sample)


def handle_export(args: argparse.Namespace) -> int:
    from pipeline.tokenizer import read_texts, save_hf_folder

    folder = save_hf_folder(args.model, args.out)
    print(f"Hugging Face folder: {folder}")
    if args.check:
        return _report_check(folder, itertools.islice(read_texts(args.check, args.text_field, args.txt_mode), SAMPLE))
    return 0
