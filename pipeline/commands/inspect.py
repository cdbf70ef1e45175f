"""`kiln inspect SHARD_OR_FOLDER`: decode packed sequences back to text, boundaries marked.

A folder (a shard folder, or a run folder with its `shards/` link) prints the manifest's
summary and then rows of one shard; a shard file prints its rows, with the tokenizer of the
manifest found above it. Each segment is shown as

    ⟦doc 2 · 118 tokens · pos 0-117⟧ text ...      a document starting in this sequence
    ⟦cont · 40 tokens · pos 0-39⟧ text ...         the rest of a document cut at a sequence start
    ⟦pad × 12⟧                                     padding

with the tokens that carry no loss (loss_mask 0) counted per row.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="decode rows of token shards, document boundaries marked",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a shard (.arrow), a shard folder with manifest.json, or a run folder")
    p.add_argument("--rows", type=int, default=3, help="sequences to show (default 3)")
    p.add_argument("--start", type=int, default=0, help="first row to show")
    p.add_argument("--shard", type=int, default=0, help="which shard of a folder (index in the manifest)")
    p.add_argument("--max-chars", type=int, default=400, help="characters shown per segment (0: all)")
    p.set_defaults(handler=handle)


def _find_manifest(path: Path) -> Path | None:
    from trainer.shards import MANIFEST_NAME

    for folder in [path, *path.parents][:4]:
        if (folder / MANIFEST_NAME).is_file():
            return folder
        if (folder / "shards" / MANIFEST_NAME).is_file():
            return folder / "shards"
    return None


def _clip(text: str, limit: int) -> str:
    text = text.replace("\n", "⏎")
    if limit and len(text) > limit:
        half = max(1, limit // 2)
        return f"{text[:half]} … {text[-half:]}"
    return text


def describe_row(row: dict, tokenizer, bos_id: int | None, pad_id: int, max_chars: int = 400) -> list[str]:
    """Lines showing one packed sequence, segment by segment. A segment starts a document when
    it starts with BOS (shards packed without BOS show every segment as `seg`); the last
    segment is padding when it is all pad ids without loss."""
    ids, lens, positions, mask = row["input_ids"], row["doc_lens"], row["position_ids"], row["loss_mask"]
    last = len(ids) - lens[-1]
    padded = len(lens) > 1 and all(t == pad_id for t in ids[last:]) and not any(mask[last:])
    lines = [f"bucket {row['bucket']} · source {row['source']} · {len(lens) - padded} segments · "
             f"{lens[-1] if padded else 0} padding · {len(ids) - sum(mask)} tokens without loss"]
    at = 0
    doc = 0
    for i, n in enumerate(lens):
        if padded and i == len(lens) - 1:
            lines.append(f"  ⟦pad × {n}⟧")
            break
        segment = ids[at:at + n]
        if bos_id is None:
            label = "seg"
        elif segment[0] == bos_id:
            label = f"doc {doc}"
            doc += 1
        else:
            label = "cont"
        text = tokenizer.decode(segment, skip_special_tokens=False)
        lines.append(f"  ⟦{label} · {n} tokens · pos {positions[at]}-{positions[at + n - 1]}⟧ {_clip(text, max_chars)}")
        at += n
    return lines


def handle(args: argparse.Namespace) -> int:
    from tokenizers import Tokenizer

    from common.errors import InputError
    from trainer.shards import Manifest, ShardFormatError, read_shard

    path = Path(args.path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    folder = _find_manifest(path)
    try:
        manifest = Manifest.load(folder) if folder else None
    except ShardFormatError as e:
        raise InputError(str(e)) from None
    if manifest is None:
        raise InputError(f"no manifest.json at or above {path}: kiln inspect needs the shard folder's tokenizer")
    if path.is_dir():
        _print_summary(manifest, folder)
        if not manifest.shards:
            print("no shards")
            return 0
        if not 0 <= args.shard < len(manifest.shards):
            raise InputError(f"--shard {args.shard}: the manifest lists {len(manifest.shards)} shards")
        shard = folder / manifest.shards[args.shard].path
    else:
        shard = path
    try:
        table = read_shard(shard)
    except ShardFormatError as e:
        raise InputError(str(e)) from None
    tokenizer = Tokenizer.from_file(str(folder / manifest.tokenizer.path / "tokenizer.json"))
    print(f"\n{shard}: {table.num_rows:,} sequences of {manifest.seq_len} tokens")
    stop = min(table.num_rows, args.start + args.rows)
    for r, row in enumerate(table.slice(args.start, max(0, stop - args.start)).to_pylist(), start=args.start):
        bos = manifest.tokenizer.bos_id if manifest.extra.get("add_bos", True) else None
        lines = describe_row(row, tokenizer, bos, manifest.tokenizer.pad_id, args.max_chars)
        print(f"\n── row {r} · {lines[0]}")
        print("\n".join(lines[1:]))
    return 0


def _print_summary(manifest, folder: Path) -> None:
    total = manifest.total_tokens
    content = total - manifest.padding_tokens
    print(f"{folder}: {len(manifest.shards)} shards, {sum(s.sequences for s in manifest.shards):,} sequences of "
          f"{manifest.seq_len} tokens ({manifest.pack_mode}), {manifest.documents:,} documents")
    if total:
        print(f"tokens {total:,}: {content:,} content, {manifest.padding_tokens:,} padding "
              f"({manifest.padding_tokens / total:.2%}), {manifest.truncated_tokens:,} truncated away")
    print(f"tokenizer: {manifest.tokenizer.path}/ (vocabulary {manifest.tokenizer.vocab_size:,}, "
          f"sha256 {manifest.tokenizer.sha256[:12]}…)")
    for title, counts in (("bucket", manifest.tokens_by_bucket), ("source", manifest.tokens_by_source),
                          ("language", manifest.tokens_by_lang)):
        if counts:
            names = manifest.bucket_names if title == "bucket" else {}
            print(f"by {title}: " + ", ".join(
                f"{k}{' (' + names[k] + ')' if k in names else ''} {v:,}" for k, v in counts.items()))
