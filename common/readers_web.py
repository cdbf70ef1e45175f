"""Web crawl readers: WARC / WET files (parsed with FastWARC) and HTML files.

A page's document text is its decoded HTML; the `html_extract` operator turns it into main
text later, so extraction runs (and is timed, and rejects) as a stage operator like any other.

WARC (`.warc`, `.warc.gz`, `.warc.lz4`, `.wet`, `.wat`, ...; FastWARC detects the
compression, gzip per record or per file, and LZ4): every record is accounted for.
- An HTTP `response` record with a 2xx status and an HTML content type (`text/html`,
  `application/xhtml+xml`, or none and bytes that look like HTML), or a `resource` record
  of HTML, becomes a document: `url` from WARC-Target-URI, `warc_date`, `warc_record_id`,
  and in `meta` the HTTP status, content type and the encoding the page was decoded with.
  The charset comes from the HTTP header, then the page's meta tag, then detection
  (pipeline/decoding.py).
- A WET `conversion` record is already plain text (UTF-8) and becomes a document as it is.
- Every other record is a rejected row (`reject_op = read`) with the reason it was skipped
  (`skipped_request`, `skipped_metadata`, `skipped_warcinfo`, `skipped_revisit`, `not_html`,
  `http_status`, ...), so that stage 1's docs_in counts every record of the crawl.
- A record shorter than its Content-Length is `truncated_record`; a file the parser cannot
  read past is one `corrupt_file` rejection naming the byte offset, after the records read
  before it.

ARC files (the Internet Archive's format before WARC; `.arc`, `.arc.gz`) and WARC files with
LF-only line ends (cc_net's WET samples), which FastWARC does not read, go through two small
parsers here that hand the same records to the same code.

HTML files (`.html`, `.htm`, `.xhtml`, optionally compressed) are one document each.
"""

from __future__ import annotations

import gzip
import io
import re
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from common.decoding import AUTO, Decoder

if TYPE_CHECKING:
    from common.inputs import InputSpec
    from common.readers import InputFile

FORMATS = ("warc", "html")
SUFFIXES = (".warc", ".wet", ".wat", ".arc", ".lz4")
WARC_NAME = re.compile(r"\.(?:warc|wet|wat|arc)(?:\.(?:gz|lz4))?$")
HTML_TYPES = ("text/html", "application/xhtml+xml")
# Bytes that mark a page as HTML where the server sent no content type.
HTML_SNIFF = re.compile(rb"^\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.I | re.S)
HEADER_END = re.compile(rb"\r?\n\r?\n")


def is_warc(name: str) -> bool:
    """A lower-case file name of a WARC, WET, WAT or ARC file, compressed or not."""
    return WARC_NAME.search(name) is not None


def web_rows(file: InputFile, spec: InputSpec) -> Iterator[dict[str, Any]]:
    if file.format == "html":
        return _html_file_rows(file, spec)
    return _warc_rows(file, spec)


def _decoder(spec: InputSpec) -> Decoder:
    # A page declares its own charset: auto (with the page's meta tag) unless the input names one.
    return Decoder(spec.encoding or AUTO, spec.on_decode_error, sniff_markup=True)


def _html_file_rows(file: InputFile, spec: InputSpec) -> Iterator[dict[str, Any]]:
    from common.readers import _open, _text_record

    with _open(file) as stream:
        try:
            raw = stream.read()
        except (EOFError, OSError, ValueError, zlib.error) as e:
            from common.readers import _reject

            yield _reject(file, file.relative, "corrupt_file", f": cannot read: {e}", "")
            return
    yield from _text_record(file, spec, file.relative, "", raw, _decoder(spec))


# --------------------------------------------------------------------------- WARC


def _http_parts(block: bytes) -> tuple[int | None, dict[str, str], bytes] | None:
    """(status, lower-cased headers, body) of an HTTP response block; None when it has no
    header end. Tolerates LF-only header lines (ClueWeb09) and repeated headers (last wins)."""
    match = HEADER_END.search(block)
    if match is None:
        return None
    head = block[: match.start()].decode("latin-1").splitlines()
    status = None
    if head and head[0].upper().startswith("HTTP/"):
        parts = head[0].split(None, 2)
        if len(parts) > 1 and parts[1].isdigit():
            status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers, block[match.end():]


def _dechunk(body: bytes) -> bytes:
    """The payload of a `Transfer-Encoding: chunked` body (what was archived as sent)."""
    out, pos = bytearray(), 0
    while pos < len(body):
        end = body.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(body[pos:end].split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += body[end + 2: end + 2 + size]
        pos = end + 2 + size + 2
    return bytes(out)


def _content_charset(content_type: str) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([A-Za-z0-9_:.+-]+)", content_type, re.I)
    return match.group(1) if match else None


class _Headers(dict):
    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self) -> bytes:
        return self.data


class _LfRecord:
    """A record of a WARC file written with LF-only line ends (cc_net's WET samples), which
    FastWARC cannot split: the same attributes as FastWARC's records."""

    def __init__(self, headers: _Headers, block: bytes, stream_pos: int) -> None:
        self.headers, self.reader, self.stream_pos = headers, _Reader(block), stream_pos
        self.content_length = len(block)


VERSION_LINE = re.compile(rb"^WARC/\d\.\d+\r?\n$")


def _lf_records(stream: Any) -> Iterator[_LfRecord]:
    """Records split at `WARC/1.0` lines, as cc_net reads them: hand-written LF-only files
    rarely hold the right Content-Length, so it is not trusted."""
    position, start = 0, 0
    headers: _Headers | None = None
    body: list[bytes] = []
    in_headers = False
    for line in stream:
        if VERSION_LINE.match(line):
            if headers is not None:
                yield _LfRecord(headers, b"".join(body).rstrip(b"\n"), start)
            headers, body, in_headers, start = _Headers(), [], True, position
        elif headers is None:
            if line.strip():
                raise ValueError(f"Invalid WARC header at byte {position}")
        elif in_headers:
            if not line.strip():
                in_headers = False
            else:
                name, _, value = line.decode("utf-8", "replace").partition(":")
                headers[name.strip().lower()] = value.strip()
        else:
            body.append(line)
        position += len(line)
    if headers is not None:
        yield _LfRecord(headers, b"".join(body).rstrip(b"\n"), start)


def _arc_records(stream: Any) -> Iterator[_LfRecord]:
    """Records of an ARC file (Internet Archive's format before WARC, v1 and v2): a header
    line `URL IP date content-type ... length`, then `length` bytes. The `filedesc://` record
    is the file's description; a header whose length is not a number is a malformed record,
    and reading goes on at the next line (the ARC readers of warcio and ia-web-commons recover
    the same way)."""
    position = 0
    recovering = False
    while True:
        line = stream.readline()
        if not line:
            return
        start = position
        position += len(line)
        if not line.strip():
            continue
        fields = line.split()
        # The date (14 digits or more) follows the IP address; a URL may hold spaces.
        date_at = next((i for i in range(2, len(fields) - 1) if fields[i].isdigit() and len(fields[i]) >= 14), None)
        if date_at is None or len(fields) < 5:
            if recovering:
                continue  # the unknown body of a malformed record
            raise ValueError(f"not an ARC record header at byte {start}")
        recovering = False
        url = b" ".join(fields[: date_at - 1]).decode("utf-8", "replace")
        date = fields[date_at].decode("ascii")
        headers = _Headers({"warc-target-uri": url,
                            "warc-date": f"{date[:4]}-{date[4:6]}-{date[6:8]}T{date[8:10]}:{date[10:12]}:{date[12:14]}Z"})
        try:
            length = int(fields[-1])
            if length < 0:
                raise ValueError
        except ValueError:
            headers["warc-type"] = "malformed"
            recovering = True
            yield _LfRecord(headers, b"", start)
            continue
        block = stream.read(length)
        position += len(block)
        headers["warc-type"] = "arcinfo" if url.startswith("filedesc:") else "response"
        record = _LfRecord(headers, block, start)
        record.content_length = length  # a block cut short is a truncated record
        yield record


def _sniff(file: InputFile) -> str:
    """`arc`, `lf_warc` (a WARC file whose lines end in LF alone) or `warc`."""
    from common.readers import _open

    try:
        with _open(file) as stream:
            first = stream.read(64)
            if first.startswith(b"\x1f\x8b"):  # gzip: FastWARC reads it; ARC is read here
                with gzip.GzipFile(fileobj=io.BytesIO(first + stream.read(4096))) as inner:
                    first = inner.read(64)
    except (OSError, EOFError):
        return "warc"
    if first.startswith(b"filedesc://"):
        return "arc"
    if first.startswith(b"WARC/") and b"\n" in first and not first.split(b"\n", 1)[0].endswith(b"\r"):
        return "lf_warc"
    return "warc"


def _warc_rows(file: InputFile, spec: InputSpec) -> Iterator[dict[str, Any]]:
    from fastwarc.warc import ArchiveIterator

    from common.readers import _open, _reject

    decoder = _decoder(spec)
    count = 0
    position = 0
    kind = _sniff(file)
    with _open(file) as raw:
        try:
            if kind == "warc":
                records: Any = ArchiveIterator(raw, parse_http=False)
            else:
                stream = raw
                head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
                if head == b"\x1f\x8b":
                    stream = gzip.GzipFile(fileobj=raw)
                records = _arc_records(stream) if kind == "arc" else _lf_records(stream)
            for record in records:
                count += 1
                position = record.stream_pos
                yield _record_row(file, spec, decoder, record, count)
        except (OSError, ValueError, EOFError, zlib.error) as e:
            where = f"{file.relative}@{position}"
            what = "not a WARC or ARC file" if count == 0 else f"cannot read past record {count} (byte {position})"
            yield _reject(file, where, "corrupt_file", f": {what}: {e}", "")
            return
    if count == 0:
        yield _reject(file, file.relative, "empty_file", ": no WARC record in this file", "")


def _record_row(file: InputFile, spec: InputSpec, decoder: Decoder, record: Any, number: int) -> dict[str, Any]:
    from common.readers import _reject

    headers = record.headers
    kind = (headers.get("WARC-Type") or "unknown").strip().lower()
    record_id = (headers.get("WARC-Record-ID") or "").strip("<> ") or None
    url = (headers.get("WARC-Target-URI") or "").strip("<> ") or None
    date = headers.get("WARC-Date")
    where = f"{file.relative}:{number}"  # record ids repeat in hand-made files; the position does not
    detail = f": record {number} ({kind}) at byte {record.stream_pos}"
    block = record.reader.read()

    def reject(reason: str, text: str = "", extra: str = "") -> dict[str, Any]:
        row = _reject(file, where, reason, detail + extra, text)
        row.update(url=url, warc_record_id=record_id, warc_date=date)
        return row

    if kind == "malformed":
        return reject("malformed_record", extra=": the ARC header's length is not a number")
    if kind not in ("response", "resource", "conversion"):
        return reject(f"skipped_{re.sub(r'[^a-z0-9]+', '_', kind)[:20]}")
    if len(block) < record.content_length:
        return reject("truncated_record", extra=f": {len(block):,} of {record.content_length:,} bytes")
    meta: dict[str, Any] = {"warc_type": kind}
    declared: list[str | None] = []
    if kind == "conversion":  # WET: extracted text, always UTF-8
        body = block
        declared.append("utf-8")
    elif kind == "resource":
        content_type = headers.get("Content-Type") or ""
        if not (content_type.lower().startswith(HTML_TYPES) or HTML_SNIFF.match(block[:1024])):
            return reject("not_html", extra=f": content type {content_type or 'none'}")
        body = block
        declared.append(_content_charset(content_type))
        meta["content_type"] = content_type
    else:
        parts = _http_parts(block)
        if parts is None:
            return reject("malformed_http", extra=": no end of HTTP headers")
        status, http, body = parts
        content_type = http.get("content-type", "")
        meta |= {"http_status": status, "content_type": content_type or None}
        if status is None or not 200 <= status < 300:
            return reject("http_status", extra=f": HTTP status {status}")
        if not (content_type.lower().startswith(HTML_TYPES) or (not content_type and HTML_SNIFF.match(body[:1024]))):
            return reject("not_html", extra=f": content type {content_type or 'none'}")
        if "chunked" in http.get("transfer-encoding", "").lower():
            body = _dechunk(body)
        encoding = http.get("content-encoding", "identity").lower()
        if "gzip" in encoding and not body.startswith(b"\x1f\x8b"):
            encoding = "identity"  # the crawler stored the page decoded but kept the header (ClueWeb09)
        if encoding in ("gzip", "x-gzip", "deflate"):
            try:
                body = zlib.decompress(body, 47 if "gzip" in encoding else 15)
            except zlib.error as e:
                return reject("bad_content_encoding", extra=f": {encoding}: {e}")
        elif encoding not in ("identity", ""):
            return reject("bad_content_encoding", extra=f": unsupported Content-Encoding {encoding}")
        declared.append(_content_charset(content_type))
    if len(body) > spec.max_doc_bytes:
        return reject("too_large", extra=f": {len(body):,} bytes > max_doc_bytes {spec.max_doc_bytes:,}")
    decoded = decoder.decode(body, declared)
    if decoded.text is None:
        return reject("bad_encoding", extra=f": {decoded.error}")
    if not decoded.text.strip():
        return reject("empty_text")
    meta["encoding"] = decoded.encoding
    row = {"id": f"{file.source}:{where}", "text": decoded.text, "source": file.source, "lang": spec.lang,
           "url": url, "warc_record_id": record_id, "warc_date": date,
           "meta": orjson.dumps(meta).decode(),
           "stat.decode_replacements": decoded.replacements if decoder.replace else None}
    return row
