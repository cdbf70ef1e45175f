"""Bytes to text for the readers: a declared input encoding, or `auto` detection.

Web pages and older Chinese corpora come in GBK, GB18030, Big5, Shift_JIS, windows-125x and
more, and a reader that only knows UTF-8 either rejects them all or, with `replace`, keeps
them full of U+FFFD that a later rule rejects for the wrong reason. So an input names its
`encoding` (any Python codec name), or says `auto`:

1. a byte order mark (UTF-8, UTF-16, UTF-32) decides;
2. UTF-8, when the bytes are valid UTF-8 (random legacy bytes almost never are, and pages
   that declare latin-1 while holding UTF-8 are common);
3. the charsets the document declares, most trusted first: for a web page the HTTP
   `Content-Type` header, then `<meta charset>` / `<?xml encoding?>` in its first bytes;
4. the encoding of the file's previous document that needed detection (one file is almost
   always in one encoding, and detection on a short line is less sure than on a long one);
5. detection with charset-normalizer.

The first candidate that decodes the bytes without error wins. A legacy label is read with
its superset codec, as browsers do (WHATWG Encoding): gb2312 and gbk as gb18030, big5 as
big5hkscs, latin-1 as windows-1252, so pages labelled gb2312 that use GBK characters decode.

A document no candidate decodes is a `bad_encoding` rejection (`invalid_utf8` when the input
declared UTF-8), unless the input asks for `on_decode_error: replace`: then it is decoded
with replacement characters and their number travels as `stat.decode_replacements`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

AUTO = "auto"
# Read a legacy label with its superset codec, as the WHATWG Encoding standard does.
SUPERSETS = {"gb2312": "gb18030", "gbk": "gb18030", "big5": "big5hkscs", "iso8859-1": "cp1252"}
BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
# Where a page or XML file declares its charset; only its first bytes are searched (the
# WHATWG prescan looks at 1024, real pages put long scripts before the meta tag).
DECLARATION_BYTES = 4096
META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_:.+-]{2,40})""", re.I)
XML_ENCODING = re.compile(rb"""<\?xml[^>]{0,100}?encoding\s*=\s*["']([A-Za-z0-9_:.+-]{2,40})""", re.I)


@lru_cache(maxsize=256)
def codec_name(label: str | None) -> str | None:
    """The Python codec for an encoding label (`GB2312`, `utf8`, `x-sjis`...), with legacy
    Chinese labels mapped to their superset; None when Python has no such codec."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'").lower()).name
    except (LookupError, ValueError):
        return None
    return SUPERSETS.get(name, name)


def declared_charsets(raw: bytes) -> list[str]:
    """Charsets a page or XML document declares in its first bytes (meta tag, XML prolog)."""
    head = raw[:DECLARATION_BYTES]
    found = []
    for pattern in (META_CHARSET, XML_ENCODING):
        match = pattern.search(head)
        if match:
            found.append(match.group(1).decode("ascii", "replace"))
    return found


def detect(raw: bytes) -> str | None:
    """charset-normalizer's best guess for `raw`, as a Python codec name."""
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    return codec_name(best.encoding) if best is not None else None


@dataclass
class Decoded:
    text: str | None  # None: rejected
    encoding: str | None  # the codec that decoded it
    replacements: int = 0  # U+FFFD put in by on_decode_error: replace
    error: str | None = None  # why nothing decoded it


class Decoder:
    """Decodes the documents of one input file. Holds the file's last detected encoding,
    which it tries before running detection again."""

    def __init__(self, encoding: str = "utf-8", on_error: str = "reject", sniff_markup: bool = False) -> None:
        self.auto = encoding == AUTO
        self.sniff_markup = sniff_markup  # documents are pages: look for a meta tag / XML prolog
        self.encoding = None if self.auto else (codec_name(encoding) or encoding)
        self.replace = on_error == "replace"
        self.last_detected: str | None = None

    def decode(self, raw: bytes, declared: Iterable[str | None] = ()) -> Decoded:
        """`declared`: charsets the container names (a WARC record's HTTP header), most
        trusted first."""
        if not self.auto:
            try:
                return Decoded(raw.decode(self.encoding), self.encoding)
            except UnicodeDecodeError as e:
                return self._failed(raw, self.encoding, f"not valid {self.encoding} at byte {e.start}")
        tried: list[str] = []
        for candidate in self._candidates(raw, declared):
            if candidate is None or candidate in tried:
                continue
            tried.append(candidate)
            try:
                return Decoded(raw.decode(candidate), candidate)
            except (UnicodeDecodeError, LookupError):
                continue
        detected = detect(raw)
        if detected is not None and detected not in tried:
            tried.append(detected)
            try:
                text = raw.decode(detected)
            except (UnicodeDecodeError, LookupError):
                pass
            else:
                self.last_detected = detected
                return Decoded(text, detected)
        return self._failed(raw, detected or "utf-8", f"no encoding decodes it (tried {', '.join(tried)})")

    def _candidates(self, raw: bytes, declared: Iterable[str | None]) -> Iterable[str | None]:
        for bom, name in BOMS:
            if raw.startswith(bom):
                yield name
                return  # a BOM is never wrong about the encoding it marks
        yield "utf-8"
        for label in declared:
            yield codec_name(label)
        if self.sniff_markup:
            for label in declared_charsets(raw):
                yield codec_name(label)
        yield self.last_detected

    def _failed(self, raw: bytes, encoding: str, error: str) -> Decoded:
        if not self.replace:
            return Decoded(None, None, error=error)
        text = raw.decode(encoding, "replace")
        return Decoded(text, encoding, replacements=text.count("\ufffd"))
