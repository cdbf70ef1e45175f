"""Readers: jsonl, jsonl.gz/.zst/.bz2/.xz, parquet and plain text into document batches;
WARC/WET and HTML files through `common.readers_web`.

Bytes become text in the input's `encoding` (UTF-8 by default, any Python codec, or `auto`;
see `common.decoding`).

Every physical record becomes a row. Records that cannot be used (malformed JSON, invalid
UTF-8, a missing, non-string or empty text field, a document over `max_doc_bytes`, a
truncated compressed stream) become rejected rows with `reject_op = "read"`, a reason, and a
`reject_detail` naming file and line; valid rows of the same file go through. So stage 1's
`docs_in` counts every record of the input and nothing is lost silently.

Ids are stable across reruns: `<source>:<id field>` when the input names an id field, else
`<source>:<file>:<line>` (jsonl, txt lines), `<source>:<file>:<row>` (parquet, 1-based) or
`<source>:<file>` (one document per file). An id read twice becomes `<id>#2` (pipeline/ids.py).

These are plain generators, used in process by `kiln verify` and tests, and wrapped in a Ray
Datasource by the runner. An input path may be a filesystem URI pyarrow understands (s3://,
gs://, hdfs://, file://): a file, a folder or a glob, read through pyarrow.fs, so that every
node of a cluster reads the same data.
"""

from __future__ import annotations

import bz2
import dataclasses
import fnmatch
import glob
import gzip
import io
import lzma
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import pyarrow as pa

from common import readers_web, storage
from common.columns import REJECT_DETAIL, REJECT_OP, REJECT_REASON
from common.decoding import Decoder
from common.errors import InputError
from common.inputs import InputSpec

READ_OP = "read"
DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("lang", pa.string()),
        ("url", pa.string()),
        ("meta", pa.string()),
        # Web crawl records (pipeline/readers_web.py): the WARC record's id and capture date.
        ("warc_record_id", pa.string()),
        ("warc_date", pa.string()),
        # Replacement characters put in by `on_decode_error: replace` (null when not asked).
        ("stat.decode_replacements", pa.int64()),
        (REJECT_OP, pa.string()),
        (REJECT_REASON, pa.string()),
        (REJECT_DETAIL, pa.string()),
    ]
)
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".txt": "txt", ".text": "txt",
           ".parquet": "parquet", ".html": "html", ".htm": "html", ".xhtml": "html"}
UTF8_BOM = b"\xef\xbb\xbf"
BATCH_ROWS = 4096
BATCH_BYTES = 64 << 20
# What a rejected row keeps of an unusable record, so the rejected set stays inspectable.
MAX_REJECTED_TEXT = 1 << 20


@dataclass(frozen=True)
class InputFile:
    path: str
    relative: str  # stable name used in ids
    format: str
    compression: str | None
    source: str
    spec_index: int
    size: int
    # A parquet file too big for one read task is read in parts, each a range of its row
    # groups (`split_parquet_files`); `first_row` is the part's first row in the file.
    row_groups: tuple[int, int] | None = None
    first_row: int = 0


def _split_suffixes(path: str) -> tuple[str | None, str | None]:
    name = os.path.basename(path).lower()
    if readers_web.is_warc(name):  # WARC files are decompressed by the WARC parser itself
        return "warc", None
    compression = None
    for suffix, kind in COMPRESSIONS.items():
        if name.endswith(suffix):
            compression, name = kind, name[: -len(suffix)]
            break
    fmt = next((kind for suffix, kind in FORMATS.items() if name.endswith(suffix)), None)
    return fmt, compression


def _default_source(path: str) -> str:
    name = os.path.basename(path)
    while True:
        stem, ext = os.path.splitext(name)
        if not ext or ext.lower() not in {*COMPRESSIONS, *FORMATS, *readers_web.SUFFIXES}:
            return name
        name = stem


def expand_inputs(specs: list[InputSpec]) -> list[InputFile]:
    """Resolve each input's path (a file, a folder or a glob) to files, checking that they
    exist, have a known format, and that parquet files hold the text column."""
    files: list[InputFile] = []
    for index, spec in enumerate(specs):
        where = f"inputs[{index}].path"
        if storage.is_uri(spec.path):
            files.extend(_expand_uri(spec, index, where))
            continue
        if any(ch in spec.path for ch in "*?["):
            matches = sorted(glob.glob(spec.path, recursive=True))
            base = Path(spec.path.split("*")[0].split("?")[0].split("[")[0])
            base = base if str(spec.path).endswith("/") or base.is_dir() else base.parent
        elif os.path.isdir(spec.path):
            base = Path(spec.path)
            matches = sorted(str(p) for p in base.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif os.path.exists(spec.path):
            base = Path(spec.path).parent
            matches = [spec.path]
        else:
            raise InputError(f"{where}: {spec.path} does not exist")
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise InputError(f"{where}: no files match {spec.path}")
        for path in matches:
            fmt, compression = _split_suffixes(path)
            if spec.format != "auto":
                fmt = spec.format
            if fmt is None:
                raise InputError(f"{where}: cannot tell the format of {path}; set inputs[{index}].format")
            if fmt == "parquet":
                _check_parquet(path, spec, index)
            relative = os.path.relpath(path, base) if base != Path("") else path
            files.append(InputFile(path=path, relative=relative, format=fmt, compression=compression,
                                   source=spec.source or _default_source(path), spec_index=index,
                                   size=os.path.getsize(path)))
    return files


def _expand_uri(spec: InputSpec, index: int, where: str) -> list[InputFile]:
    """A URI input (s3://, gs://, hdfs://, file://): one file, a folder (every file below it,
    hidden ones left out) or a glob, listed through pyarrow.fs."""
    path = spec.path.rstrip("/")
    wild = [path.index(ch) for ch in "*?[" if ch in path]
    try:
        if wild:
            base = storage.Location(path[: min(wild)].rsplit("/", 1)[0])
            matches = [(str(base / rel), info.size) for rel, info in base.files()  # like glob: no hidden files
                       if fnmatch.fnmatch(str(base / rel), path) and not rel.rsplit("/", 1)[-1].startswith(".")]
        else:
            target = storage.Location(path)
            if target.is_dir():
                base = target
                matches = [(str(base / rel), info.size) for rel, info in base.files()
                           if not rel.rsplit("/", 1)[-1].startswith(".")]
            elif target.is_file():
                base, matches = target.parent, [(str(target), target.size())]
            else:
                raise InputError(f"{where}: {spec.path} does not exist")
    except OSError as e:
        raise InputError(f"{where}: cannot list {spec.path}: {e}") from None
    if not matches:
        raise InputError(f"{where}: no files match {spec.path}")
    files = []
    for uri, size in matches:
        fmt, compression = _split_suffixes(uri)
        fmt = fmt if spec.format == "auto" else spec.format
        if fmt is None:
            raise InputError(f"{where}: cannot tell the format of {uri}; set inputs[{index}].format")
        if fmt == "parquet":
            _check_parquet(uri, spec, index)
        files.append(InputFile(path=uri, relative=uri[len(str(base)):].lstrip("/"), format=fmt,
                               compression=compression, source=spec.source or _default_source(uri),
                               spec_index=index, size=int(size or 0)))
    return files


def _check_parquet(path: str, spec: InputSpec, index: int) -> None:
    try:
        schema = storage.parquet_file(path).schema_arrow
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"inputs[{index}]: {path} is not a readable parquet file: {e}") from None
    field, key = (spec.html_field, "html_field") if spec.html_field else (spec.text_field, "text_field")
    if field.split(".")[0] not in schema.names:
        raise InputError(f"inputs[{index}].{key}: {path} has no column {field!r} "
                         f"(columns: {', '.join(schema.names)})")


def _open(file: InputFile) -> BinaryIO:
    raw: Any = file.path
    if storage.is_uri(file.path):  # a stream from pyarrow.fs, decompressed here like a local file
        fs, inner = storage.resolve_uri(file.path)
        raw = fs.open_input_stream(inner, compression=None)
    if file.compression == "gzip":
        return gzip.open(raw, "rb")
    if file.compression == "bz2":
        return bz2.open(raw, "rb")
    if file.compression == "xz":
        return lzma.open(raw, "rb")
    if file.compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw if not isinstance(raw, str) else open(raw, "rb"),
                                                          closefd=True)
    return open(raw, "rb") if isinstance(raw, str) else raw


class _Batcher:
    """Collects rows and emits tables of at most BATCH_ROWS rows or BATCH_BYTES of text."""

    def __init__(self, batch_rows: int, batch_bytes: int) -> None:
        self.batch_rows, self.batch_bytes = batch_rows, batch_bytes
        self.columns: dict[str, list[Any]] = {name: [] for name in DOC_SCHEMA.names}
        self.bytes = 0

    def add(self, **row: Any) -> pa.Table | None:
        for name, values in self.columns.items():
            values.append(row.get(name))
        self.bytes += len(row["text"] or "")
        if len(self.columns["id"]) >= self.batch_rows or self.bytes >= self.batch_bytes:
            return self.flush()
        return None

    def flush(self) -> pa.Table | None:
        if not self.columns["id"]:
            return None
        table = pa.table(self.columns, schema=DOC_SCHEMA)
        self.columns = {name: [] for name in DOC_SCHEMA.names}
        self.bytes = 0
        return table


def _lookup(record: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def _rejected_text(raw: bytes) -> str:
    return raw[:MAX_REJECTED_TEXT].decode("utf-8", "replace")


def _iter_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    # Decompressors from the standard library buffer themselves and hand out every line
    # before a corrupt block; zstandard's reader needs a buffer to read lines.
    buffered = (io.BufferedReader, gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)
    lines = stream if isinstance(stream, buffered) else io.BufferedReader(stream, 1 << 20)
    for number, line in enumerate(lines, 1):
        if number == 1:
            line = line.removeprefix(UTF8_BOM)  # editors on Windows start files with one
        yield number, line.rstrip(b"\r\n")


def read_file(file: InputFile, spec: InputSpec, batch_rows: int = BATCH_ROWS,
              batch_bytes: int = BATCH_BYTES) -> Iterator[pa.Table]:
    """Yield document batches (DOC_SCHEMA) for one input file."""
    if file.format == "parquet":
        yield from _parquet_batches(file, spec, batch_rows, batch_bytes)
    elif file.format in readers_web.FORMATS:
        yield from _rows_in_batches(readers_web.web_rows(file, spec), batch_rows, batch_bytes)
    else:
        yield from _rows_in_batches(_stream_rows(file, spec), batch_rows, batch_bytes)


def timed_batches(files: Iterable[tuple[InputFile, InputSpec]], batch_rows: int = BATCH_ROWS
                  ) -> Iterator[tuple[pa.Table, float]]:
    """`read_file` over (file, spec) pairs in order, each batch with the seconds reading it took
    (the `read` operator's time in the stage statistics)."""
    for file, spec in files:
        batches = read_file(file, spec, batch_rows)
        while True:
            started = time.perf_counter()
            table = next(batches, None)
            if table is None:
                break
            yield table, time.perf_counter() - started


def _reject(file: InputFile, where: str, reason: str, detail: str, text: str) -> dict[str, Any]:
    return {"id": f"{file.source}:{where}", "text": text, "source": file.source,
            REJECT_OP: READ_OP, REJECT_REASON: reason, REJECT_DETAIL: f"{file.path}{detail}"}


def _stream_rows(file: InputFile, spec: InputSpec) -> Iterator[dict[str, Any]]:
    stream = _open(file)
    decoder = Decoder(spec.encoding or "utf-8", spec.on_decode_error)
    line_number = 0
    try:
        if file.format == "txt" and spec.txt_mode == "file":
            raw = stream.read().removeprefix(UTF8_BOM)
            yield from _text_record(file, spec, file.relative, "", raw, decoder)
            return
        if file.format == "txt" and spec.txt_mode == "paragraphs":
            yield from _paragraph_rows(file, spec, stream, decoder)
            return
        for line_number, line in _iter_lines(stream):
            if not line.strip():
                continue  # blank lines separate records; they are not documents
            where = f"{file.relative}:{line_number}"
            if file.format == "txt":
                yield from _text_record(file, spec, where, f":{line_number}", line, decoder)
            else:
                yield _json_record(file, spec, where, f":{line_number}", line, decoder)
    except (EOFError, OSError, ValueError, lzma.LZMAError) as e:
        # A truncated or corrupt compressed stream: what was read so far stands, the rest of
        # the file is one rejected record saying where it broke.
        where = f"{file.relative}:{line_number + 1}"
        yield _reject(file, where, "corrupt_file", f":{line_number + 1}: cannot read past this line: {e}", "")
    finally:
        stream.close()


def _paragraph_rows(file: InputFile, spec: InputSpec, stream: BinaryIO, decoder: Decoder) -> Iterator[dict[str, Any]]:
    lines: list[bytes] = []
    first = 0
    for number, line in _iter_lines(stream):
        if line.strip():
            if not lines:
                first = number
            lines.append(line)
        elif lines:
            yield from _text_record(file, spec, f"{file.relative}:{first}", f":{first}", b"\n".join(lines), decoder)
            lines = []
    if lines:
        yield from _text_record(file, spec, f"{file.relative}:{first}", f":{first}", b"\n".join(lines), decoder)


def _decode(file: InputFile, spec: InputSpec, where: str, detail: str, raw: bytes,
            decoder: Decoder) -> tuple[str | None, dict | None, int | None]:
    """(text, rejected row, replacement count): the count is None unless `replace` was asked for."""
    decoded = decoder.decode(raw)
    if decoded.text is None:
        # UTF-8 declared keeps its own reason; any other encoding (or auto) is bad_encoding.
        reason = "invalid_utf8" if decoder.encoding == "utf-8" else "bad_encoding"
        return None, _reject(file, where, reason, f"{detail}: {decoded.error}", _rejected_text(raw)), None
    return decoded.text, None, decoded.replacements if decoder.replace else None


def _text_record(file: InputFile, spec: InputSpec, where: str, detail: str, raw: bytes,
                 decoder: Decoder) -> Iterator[dict[str, Any]]:
    if len(raw) > spec.max_doc_bytes:
        yield _reject(file, where, "too_large", f"{detail}: {len(raw):,} bytes > max_doc_bytes {spec.max_doc_bytes:,}",
                      _rejected_text(raw))
        return
    text, rejected, replacements = _decode(file, spec, where, detail, raw, decoder)
    if rejected is not None:
        yield rejected
        return
    if not text.strip():
        yield _reject(file, where, "empty_text", f"{detail}: empty text", text)
        return
    yield {"id": f"{file.source}:{where}", "text": text, "source": file.source, "lang": spec.lang,
           "stat.decode_replacements": replacements}


def _json_record(file: InputFile, spec: InputSpec, where: str, detail: str, line: bytes,
                 decoder: Decoder) -> dict[str, Any]:
    if len(line) > spec.max_doc_bytes:
        return _reject(file, where, "too_large", f"{detail}: {len(line):,} bytes > max_doc_bytes {spec.max_doc_bytes:,}",
                       _rejected_text(line))
    text, rejected, replacements = _decode(file, spec, where, detail, line, decoder)
    if rejected is not None:
        return rejected
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        return _reject(file, where, "malformed_json", f"{detail}: {e}", text)
    row = _record_row(file, spec, where, detail, record, raw_text=text)
    if replacements is not None and not row.get(REJECT_OP):
        row["stat.decode_replacements"] = replacements
    return row


def _record_row(file: InputFile, spec: InputSpec, where: str, detail: str, record: Any,
                raw_text: str | None = None) -> dict[str, Any]:
    if not isinstance(record, dict):
        return _reject(file, where, "not_an_object", f"{detail}: a record must be a JSON object", raw_text or repr(record))
    doc_id = where
    if spec.id_field:
        found, value = _lookup(record, spec.id_field)
        if found and value is not None and value != "":
            doc_id = str(value)
    text_field = spec.html_field or spec.text_field  # an HTML field is the text html_extract reads
    found, text = _lookup(record, text_field)
    raw = raw_text if raw_text is not None else orjson.dumps(record, default=str).decode()
    if not found or text is None:
        return _reject(file, doc_id, "missing_text", f"{detail}: no {text_field!r} field", raw)
    if not isinstance(text, str):
        return _reject(file, doc_id, "text_not_string", f"{detail}: {text_field!r} is {type(text).__name__}", raw)
    if not text.strip():
        return _reject(file, doc_id, "empty_text", f"{detail}: empty {text_field!r}", text)
    if len(text.encode("utf-8")) > spec.max_doc_bytes:
        return _reject(file, doc_id, "too_large", f"{detail}: text over max_doc_bytes {spec.max_doc_bytes:,}", text)
    url = None
    if spec.url_field:
        found, url = _lookup(record, spec.url_field)
        url = str(url) if found and url is not None else None
    meta = None
    if spec.keep_meta:
        skip = {text_field.split(".")[0], spec.id_field, spec.url_field}
        rest = {k: v for k, v in record.items() if k not in skip}
        meta = orjson.dumps(rest, default=str).decode() if rest else None
    return {"id": f"{file.source}:{doc_id}", "text": text, "source": file.source, "lang": spec.lang,
            "url": url, "meta": meta}


def _parquet_batches(file: InputFile, spec: InputSpec, batch_rows: int, batch_bytes: int) -> Iterator[pa.Table]:
    """A parquet input, a batch at a time, columnar: the usual row (valid string text, not
    empty or whitespace, not over `max_doc_bytes`) is built with Arrow kernels; rows that are
    rejected, and inputs whose fields are nested (dotted names), go through `_record_row`
    one by one, so both give the same rows."""
    parquet = storage.parquet_file(file.path)
    schema = parquet.schema_arrow
    names = schema.names
    text_field = spec.html_field or spec.text_field
    plain = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer)
    nested = any("." in f for f in (text_field, spec.id_field, spec.url_field) if f)
    odd_types = any(f in names and not any(is_type(schema.field(f).type) for is_type in plain)
                    for f in (spec.id_field, spec.url_field) if f)  # str() of a float, a bool, ...
    if nested or odd_types:
        yield from _rows_in_batches(_parquet_rows(file, spec), batch_rows, batch_bytes)
        return
    row_groups = (list(range(*file.row_groups)) if file.row_groups is not None
                  else list(range(parquet.metadata.num_row_groups)))
    row = file.first_row
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=row_groups):
        if batch.num_rows == 0:  # an empty row group: nothing to read, nothing to count
            continue
        table = _columnar_rows(file, spec, pa.Table.from_batches([batch]), row, text_field, names)
        row += table.num_rows
        # Within `batch_bytes` like the other readers, however long the documents are.
        pieces = max(1, -(-table.nbytes // batch_bytes))
        step = -(-table.num_rows // pieces)
        for start in range(0, table.num_rows, step):
            yield table.slice(start, step)


# Python's str.isspace() characters (what `_record_row`'s `not text.strip()` tests), in RE2.
_ONLY_WHITESPACE = r"^[\t-\r\x1c-\x1f\x85\pZ]*$"


def _columnar_rows(file: InputFile, spec: InputSpec, table: pa.Table, first_row: int, text_field: str,
                   names: list[str]) -> pa.Table:
    import numpy as np
    import pyarrow.compute as pc

    n = table.num_rows
    text = table.column(text_field) if text_field in names else None
    if text is None or not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        usable = np.zeros(n, dtype=bool)
    else:
        text = text.cast(pa.string())
        usable = pc.and_(pc.and_(pc.is_valid(text), pc.invert(pc.match_substring_regex(text, _ONLY_WHITESPACE))),
                         pc.less_equal(pc.binary_length(text), spec.max_doc_bytes))
        usable = usable.fill_null(False).to_numpy(zero_copy_only=False)
    keep = np.flatnonzero(usable)
    good = table.take(pa.array(keep))
    rows = pa.array(keep + first_row + 1)  # 1-based row numbers in the file
    where = pc.binary_join_element_wise(pa.scalar(file.relative), rows.cast(pa.string()), ":")
    doc_id = where
    if spec.id_field and spec.id_field in names:
        given = good.column(spec.id_field).cast(pa.string())
        doc_id = pc.if_else(pc.and_kleene(pc.is_valid(given), pc.not_equal(given, "")), given, where)
    columns: dict[str, Any] = {
        "id": pc.binary_join_element_wise(pa.scalar(file.source), doc_id, ":"),
        "text": good.column(text_field).cast(pa.string()),
        "source": pa.nulls(len(keep), pa.string()).fill_null(file.source),
        "lang": pa.nulls(len(keep), pa.string()) if spec.lang is None else
        pa.nulls(len(keep), pa.string()).fill_null(spec.lang),
        "url": (good.column(spec.url_field).cast(pa.string()) if spec.url_field and spec.url_field in names
                else pa.nulls(len(keep), pa.string())),
    }
    if spec.keep_meta:
        skip = {text_field, spec.id_field, spec.url_field}
        rest = [name for name in names if name not in skip]
        if rest:
            metas = [orjson.dumps(record, default=str).decode() if record else None
                     for record in good.select(rest).to_pylist()]
            columns["meta"] = pa.array(metas, pa.string())
    fast = pa.table({field.name: columns.get(field.name, pa.nulls(len(keep), field.type)) for field in DOC_SCHEMA},
                    schema=DOC_SCHEMA)
    if len(keep) == n:
        return fast
    # The rejected few, one by one as `_record_row` makes them, put back in file order.
    others = np.flatnonzero(~usable)
    batcher = _Batcher(len(others) + 1, 1 << 62)
    for position, record in zip(others.tolist(), table.take(pa.array(others)).to_pylist()):
        row = first_row + position + 1
        batcher.add(**_record_row(file, spec, f"{file.relative}:{row}", f":row {row}", record))
    slow = batcher.flush()
    order = np.argsort(np.concatenate([keep, others]), kind="stable")
    return pa.concat_tables([fast, slow]).take(pa.array(order))


def _rows_in_batches(rows: Iterable[dict[str, Any]], batch_rows: int, batch_bytes: int) -> Iterator[pa.Table]:
    batcher = _Batcher(batch_rows, batch_bytes)
    for row in rows:
        table = batcher.add(**row)
        if table is not None:
            yield table
    table = batcher.flush()
    if table is not None:
        yield table


def _parquet_rows(file: InputFile, spec: InputSpec) -> Iterator[dict[str, Any]]:
    """A parquet input row by row (nested fields; and the reference the columnar path is
    tested against)."""
    parquet = storage.parquet_file(file.path)
    row = file.first_row
    row_groups = list(range(*file.row_groups)) if file.row_groups is not None else None
    for batch in parquet.iter_batches(batch_size=4096, row_groups=row_groups):
        for record in batch.to_pylist():
            row += 1
            yield _record_row(file, spec, f"{file.relative}:{row}", f":row {row}", record)


def split_parquet_files(files: list[InputFile], target_bytes: int) -> list[InputFile]:
    """Parquet inputs larger than `target_bytes` as parts of whole row groups of about that
    size (on disk), so that one big file is read by several tasks; other files as they are."""
    parts: list[InputFile] = []
    for file in files:
        if file.format != "parquet" or file.size <= target_bytes:
            parts.append(file)
            continue
        metadata = storage.parquet_file(file.path).metadata
        groups = [metadata.row_group(g) for g in range(metadata.num_row_groups)]
        total = sum(g.total_byte_size for g in groups) or 1
        start, first_row, rows, size = 0, 0, 0, 0
        for number, group in enumerate(groups):
            rows += group.num_rows
            size += group.total_byte_size
            if size * file.size >= target_bytes * total or number == len(groups) - 1:
                parts.append(dataclasses.replace(file, row_groups=(start, number + 1), first_row=first_row,
                                                 size=max(1, file.size * size // total)))
                start, first_row, rows, size = number + 1, first_row + rows, 0, 0
    return parts


def read_inputs(specs: list[InputSpec], batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """Every input, in process: for tests and `kiln verify`. Repeated ids are renamed as the
    runner's read does (pipeline/ids.py)."""
    from common.ids import IdClaims, make_unique

    claims = IdClaims()
    for file in expand_inputs(specs):
        for table in read_file(file, specs[file.spec_index], batch_rows):
            yield make_unique(table, claims.claim)
