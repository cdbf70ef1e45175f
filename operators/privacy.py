"""PII masking: e-mail addresses, phone numbers, Chinese resident ID numbers, IP addresses and
bank card numbers, replaced by placeholders and counted per type.

Pretraining text should not teach a model somebody's phone number. Every detector pairs a
regular expression with a validation step, because numbers are everywhere in news and reviews
and a false positive destroys content (a price, a date, an order number, a statistic):

- resident ID: 18 characters, a real province code, a real birth date, and the ISO 7064
  MOD 11-2 check character; random 18-digit numbers fail the checksum 10 times out of 11;
- bank card: 13-19 digits (or grouped by spaces or dashes), an issuer prefix card networks
  use, and the Luhn check digit;
- IP addresses: candidates validated with the `ipaddress` module (octets 0-255, no leading
  zeros, IPv6 grammar); four one-digit groups (8.8.8.8, but also 1.4.5.8 as list numbering)
  only where a word just before says it is an address (IP, DNS, server, 地址, ...), and
  compressed IPv6 forms only when they carry enough hex digits to be an address (fe80::1,
  not a::b);
- phone: Chinese mobile (1[3-9]x, optional +86 / 0086), Chinese landline written with an
  area code and a separator (010-12345678, (0755) 1234 5678), international numbers with a
  leading `+` and a country code, North American numbers ((212) 555-0147);
- e-mail: an ASCII local part, `@`, a dotted domain with a letter TLD.

Chinese text puts digits right next to ideographs (`电话13812345678联系`), where `\\b` sees no
boundary, so numbers are delimited with digit lookarounds instead. Detectors run in order of
specificity (e-mail, IP, ID, card, phone) and a later detector never claims characters an
earlier one matched, so an ID number is never also counted as a card or a phone. One cheap
pass finds the runs of digits and separators; the number detectors search only runs with
enough digits for their kind, which keeps English prose (digits in every other sentence)
fast.

Not covered: 15-digit first-generation IDs (no check digit to tell them from other numbers),
landlines written without any separator, and national formats other than Chinese and North
American ones unless written with `+` and a country code.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable, Iterator
from datetime import date
from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from operators.base import Mapper, Outcome, Params, set_column, text_column
from operators.registry import register

PiiType = Literal["email", "phone", "id_number", "ip", "bank_card"]
# Detection order: the most specific pattern claims its characters first.
PII_TYPES: tuple[PiiType, ...] = ("email", "ip", "id_number", "bank_card", "phone")

Span = tuple[int, int]

# --------------------------------------------------------------------------- validators

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# Province-level codes of GB/T 2260, plus 71 (Taiwan) and 81/82/83 (residence permits of
# Hong Kong, Macao and Taiwan residents).
_ID_PROVINCES = frozenset(
    {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
     "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
     "65", "71", "81", "82", "83"}
)


def id_check_char(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of a resident ID's first 17 digits."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS)) % 11]


def id_shaped(candidate: str, today: date | None = None) -> bool:
    """18 characters with a province code and a birth date where a resident ID has them."""
    if len(candidate) != 18 or not candidate[:17].isdigit() or candidate[:2] not in _ID_PROVINCES:
        return False
    try:
        born = date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    return born.year >= 1900 and born <= (today or date.today())


def is_resident_id(candidate: str, today: date | None = None) -> bool:
    """An 18-character mainland resident ID: province code, birth date, check character."""
    return id_shaped(candidate, today) and id_check_char(candidate[:17]) == candidate[17].upper()


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_prefix_ok(digits: str) -> bool:
    """Issuer prefixes and lengths of the networks in use: Visa, Mastercard, American Express,
    JCB, Diners, UnionPay / Discover / Maestro (6), Chinese domestic cards (9)."""
    n, first, two = len(digits), digits[0], int(digits[:2])
    if first == "4":
        return n in (13, 16, 19)
    if 51 <= two <= 55:
        return n == 16
    if first == "2":
        return n == 16 and 2221 <= int(digits[:4]) <= 2720
    if two in (34, 37):
        return n == 15
    if two == 35 or two in (30, 36, 38):
        return 14 <= n <= 19
    if first in "69":
        return 16 <= n <= 19
    return False


def is_bank_card(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _card_prefix_ok(digits) and luhn_ok(digits)


# --------------------------------------------------------------------------- detectors

_FLAGS = re.ASCII  # \d and \w mean ASCII: full-width digits are normalize's job

EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
    _FLAGS,
)
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)", _FLAGS)
IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:])",
    _FLAGS,
)
RESIDENT_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])", _FLAGS)
BANK_CARD = re.compile(
    r"(?<![\d\-])(?:\d{13,19}"
    r"|\d{4}(?P<s1>[ \-])\d{4}(?P=s1)\d{4}(?P=s1)\d{1,4}(?:(?P=s1)\d{1,3})?"
    r"|\d{4}(?P<s2>[ \-])\d{6}(?P=s2)\d{4,5})(?!\d)",
    _FLAGS,
)
_CN_PREFIX = r"(?:(?:\+|00)86[ \-]?|\(\+?86\)[ \-]?)"
MOBILE = re.compile(rf"(?<![\d+]){_CN_PREFIX}?1[3-9]\d(?:[ \-]?\d{{4}}){{2}}(?!\d)", _FLAGS)
# Area codes: 010, 02x, and four-digit 03xx-09xx; local numbers start with 2-9. A separator or
# parentheses are required: a bare 11-12 digit run starting with 0 is too often something else.
_AREA = r"(?:10|2\d|[3-9]\d{2})"
_LOCAL = r"[2-9]\d{2,3}[ \-]?\d{4}"
LANDLINE = re.compile(
    rf"(?<![\d+])(?:{_CN_PREFIX}\(?{_AREA}\)?[ \-]?|\(0{_AREA}\)[ \-]?|0{_AREA}[ \-]){_LOCAL}(?!\d)",
    _FLAGS,
)
INTERNATIONAL = re.compile(
    r"(?<![\w+])\+[1-9]\d{0,2}[ \-.]?(?:\(\d{1,4}\)[ \-.]?)?\d{1,4}(?:[ \-.]?\d{1,4}){1,4}(?!\d)", _FLAGS
)
NORTH_AMERICAN = re.compile(
    r"(?<![\d+\-.])(?:\+?1[ \-.])?(?:\([2-9]\d{2}\)[ ]?|[2-9]\d{2}[\-. ])[2-9]\d{2}[\-. ]\d{4}(?![\d\-])",
    _FLAGS,
)
# Every digit-based item lies inside a run of digits and the separators numbers are written
# with. Finding those runs is one cheap pass; the detectors then search only runs holding
# enough digits, with lookbehinds that still see the real text before the run.
NUMBER_RUN = re.compile(r"[+(]*\d[\d \-.()+Xx]*", _FLAGS)
# A detector's search window reaches this far past a run, for its lookaheads.
_LOOKAHEAD = 2
Window = tuple[int, int, int]  # start, end, digits


def _number_windows(text: str) -> list[Window]:
    windows = []
    for m in NUMBER_RUN.finditer(text):
        digits = sum(c.isdigit() for c in m.group())
        if digits >= 4:
            windows.append((m.start(), m.end(), digits))
    return windows


def _search(pattern: re.Pattern[str], text: str, windows: list[Window], min_digits: int) -> Iterator[re.Match[str]]:
    n = len(text)
    for start, end, digits in windows:
        if digits >= min_digits:
            yield from pattern.finditer(text, start, min(n, end + _LOOKAHEAD))


def _longest_valid_prefix(m: re.Match[str], valid: Callable[[str], bool]) -> Span | None:
    """The match, or its longest prefix ending before a separator, that passes `valid`.
    Grouped numbers followed by another short number ("4111 1111 1111 1111 5 pcs") are taken
    greedily by the regex; the number may be the part before the extra group."""
    candidate = m.group()
    while candidate:
        if valid(candidate):
            return m.start(), m.start() + len(candidate)
        cut = max(candidate.rfind(" "), candidate.rfind("-"), candidate.rfind("."))
        candidate = candidate[:cut].rstrip(" -.") if cut > 0 else ""
    return None


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


# Words that say a dotted quad nearby is an address; checked only for four one-digit groups.
_IP_CONTEXT = re.compile(r"(?i)\b(?:ip|ipv4|dns|server|host|ping|gateway|router|proxy|resolver|address|addr|nameserver)"
                         r"|地址|服务器|网关|主机|域名|解析")
_IP_CONTEXT_CHARS = 32


def _valid_ipv4(candidate: str, before: str = "") -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:  # octet over 255, or a leading zero
        return False
    # Four one-digit groups (1.4.5.8) are list numbering or scores more often than hosts,
    # unless the text just before speaks of addresses (DNS 8.8.8.8 and 1.1.1.1).
    return any(len(octet) > 1 for octet in candidate.split(".")) or bool(_IP_CONTEXT.search(before))


def _valid_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    if "::" not in candidate:
        return True
    # Compressed forms such as `a::b` or `d::` turn up in code and prose; an address written
    # in compressed form still carries a few groups of hex digits (fe80::1, 2001:db8::).
    groups = [g for g in re.split(r"[:.]", candidate) if g]
    return len(groups) >= 2 and sum(len(g) for g in groups) >= 5


def _valid_mobile(candidate: str) -> bool:
    # 15000000000 is more often an amount than a phone: subscriber numbers are not all zeros.
    return not _digits(candidate).endswith("00000000")


def _valid_international(candidate: str) -> bool:
    digits = _digits(candidate)
    return 8 <= len(digits) <= 15 and not digits.startswith("86")


def _find_email(text: str, windows: list[Window]) -> Iterator[Span]:
    if "@" in text:
        yield from (m.span() for m in EMAIL.finditer(text))


def _find_ip(text: str, windows: list[Window]) -> Iterator[Span]:
    # IPv6 first: it may end in an IPv4 address (::ffff:10.0.0.12).
    if text.count(":") >= 2:
        for m in IPV6.finditer(text):
            if _valid_ipv6(m.group()):
                yield m.span()
    for m in _search(IPV4, text, windows, 4):
        if _valid_ipv4(m.group(), text[max(0, m.start() - _IP_CONTEXT_CHARS):m.start()]):
            yield m.span()


def _find_id(text: str, windows: list[Window]) -> Iterator[Span]:
    for m in _search(RESIDENT_ID, text, windows, 17):
        if is_resident_id(m.group()):
            yield m.span()


def _find_card(text: str, windows: list[Window]) -> Iterator[Span]:
    for m in _search(BANK_CARD, text, windows, 13):
        if id_shaped(m.group()):
            # Shaped like a resident ID but failing its check character: a mistyped or made-up
            # ID number far more often than one of the rare 18-digit cards; left alone.
            continue
        span = _longest_valid_prefix(m, lambda c: is_bank_card(_digits(c)))
        if span:
            yield span


def _find_phone(text: str, windows: list[Window]) -> Iterator[Span]:
    for m in _search(MOBILE, text, windows, 11):
        if _valid_mobile(m.group()):
            yield m.span()
    yield from (m.span() for m in _search(LANDLINE, text, windows, 9))
    for m in _search(INTERNATIONAL, text, windows, 8):
        span = _longest_valid_prefix(m, _valid_international)
        if span:
            yield span
    yield from (m.span() for m in _search(NORTH_AMERICAN, text, windows, 10))


_DETECTORS: dict[str, Callable[[str, list[Window]], Iterator[Span]]] = {
    "email": _find_email,
    "ip": _find_ip,
    "id_number": _find_id,
    "bank_card": _find_card,
    "phone": _find_phone,
}


def find_pii(text: str, types: tuple[str, ...] = PII_TYPES) -> list[tuple[int, int, str]]:
    """Non-overlapping PII spans `(start, end, type)` in text order. `types` are tried in
    `PII_TYPES` order whatever order they are given in."""
    windows = _number_windows(text)
    if not windows and "@" not in text and text.count(":") < 2:
        return []
    starts: list[int] = []
    spans: list[tuple[int, int, str]] = []
    for kind in PII_TYPES:
        if kind not in types:
            continue
        for start, end in _DETECTORS[kind](text, windows):
            i = bisect.bisect_left(starts, start)
            if i > 0 and spans[i - 1][1] > start:
                continue  # overlaps the span before it
            if i < len(spans) and spans[i][0] < end:
                continue  # overlaps the span after it
            starts.insert(i, start)
            spans.insert(i, (start, end, kind))
    return spans


def mask_spans(text: str, spans: list[tuple[int, int, str]], placeholders: dict[str, str]) -> str:
    parts, last = [], 0
    for start, end, kind in spans:
        parts.append(text[last:start])
        parts.append(placeholders[kind])
        last = end
    parts.append(text[last:])
    return "".join(parts)


# --------------------------------------------------------------------------- operator


class Placeholders(Params):
    email: str = "<EMAIL>"
    phone: str = "<PHONE>"
    id_number: str = "<ID_NUMBER>"
    ip: str = "<IP>"
    bank_card: str = "<BANK_CARD>"


class PiiParams(Params):
    types: list[PiiType] = Field(default_factory=lambda: list(PII_TYPES),
                                 description="PII types to find; the others are left alone")
    mode: Literal["mask", "count"] = Field("mask", description="mask: replace with placeholders; count: only count")
    placeholders: Placeholders = Field(default_factory=Placeholders)
    max_pii: int | None = Field(None, ge=0, description="reject documents with more PII items than this (too_much_pii)")

    @model_validator(mode="after")
    def _check_types(self) -> PiiParams:
        if not self.types:
            raise ValueError("types: name at least one of " + ", ".join(PII_TYPES))
        if len(set(self.types)) != len(self.types):
            raise ValueError("types: a type is listed twice")
        return self


@register
class PiiMask(Mapper):
    """Masks (or only counts) e-mail addresses, phone numbers, resident ID numbers, IP
    addresses and bank card numbers. Records `stat.pii_<type>` per enabled type and
    `stat.pii_total`; with `max_pii` set, rejects documents holding more (`too_much_pii`).
    In analyze mode it counts and leaves the text as is."""

    name = "pii_mask"
    Params = PiiParams

    def map(self, batch: pa.Table) -> Outcome:
        p = self.params
        types = tuple(p.types)
        placeholders = p.placeholders.model_dump()
        mask = p.mode == "mask" and not self.analyze
        texts = text_column(batch)
        counts = {kind: [0] * len(texts) for kind in types}
        totals = [0] * len(texts)
        out = []
        for row, text in enumerate(texts):
            spans = find_pii(text, types)
            for _, _, kind in spans:
                counts[kind][row] += 1
            totals[row] = len(spans)
            out.append(mask_spans(text, spans, placeholders) if mask and spans else text)

        table = batch
        if mask:
            table = set_column(table, "text", pa.array(out, type=batch.schema.field("text").type))
        for kind in PII_TYPES:
            if kind in counts:
                table = set_column(table, f"stat.pii_{kind}", pa.array(counts[kind], type=pa.int64()))
        table = set_column(table, "stat.pii_total", pa.array(totals, type=pa.int64()))

        if p.max_pii is None:
            return Outcome(table)
        reasons, details = [], []
        for row, total in enumerate(totals):
            if total > p.max_pii:
                reasons.append("too_much_pii")
                found = ", ".join(f"{kind}={counts[kind][row]}" for kind in types if counts[kind][row])
                details.append(f"{total} PII items > {p.max_pii}: {found}")
            else:
                reasons.append(None)
                details.append(None)
        return Outcome(table, reasons, details)
