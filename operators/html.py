"""`html_extract`: a web page's main text, without its menus, footers and sidebars.

The web readers (and `html_field`) hand a page on as its decoded HTML; this operator keeps
the article and drops the furniture around it, which line rules cannot do as well from
flattened text (`strip_markup` keeps every word of a page). Two engines:

- `trafilatura` (default; FineWeb's choice): the best-measured main-text extraction, with
  title, author, date, site name and description from the page's metadata;
- `resiliparse`: Resiliparse's `extract_plain_text(main_content=True)`, several times faster,
  with the `<title>` only.

The title goes to a `title` column; the other metadata into the `meta` JSON. A page whose
extraction is empty is rejected (`no_main_text`). Rows that hold no HTML (WET records, which
are already text) pass through unchanged, so a recipe can read WARC and WET files alike.
`stat.html_chars` records the page's size and `stat.main_text_ratio` the share of it kept.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from operators.base import Mapper, Outcome, Params, set_column
from operators.registry import register
from operators.rules import Rule

# A row is taken for HTML when its first bytes hold a tag that only pages have.
HTML_HINT = re.compile(r"<(?:!doctype|html|head|body|div|p|span|table|article|meta|title|br)\b", re.I)
HINT_CHARS = 4096
BLANK_LINES = re.compile(r"\n{3,}")
# trafilatura writes a table row as its cells joined by " | ". Pages laid out with tables
# (older sites, forums) then come out as one line per row holding whole paragraphs: a cell
# this long is a paragraph and gets its own line; rows of short cells stay as data tables.
LAYOUT_CELL_CHARS = 100
CELL_SPLIT = re.compile(r"\s*\|\s*")
META_KEYS = ("author", "date", "sitename", "description", "hostname", "categories", "tags")


class HtmlExtractParams(Params):
    engine: Literal["trafilatura", "resiliparse"] = Field(
        "trafilatura", description="trafilatura (best quality, FineWeb's) or resiliparse (fast)")
    favor: Literal["balanced", "precision", "recall"] = Field(
        "balanced", description="trafilatura: keep less furniture (precision) or more text (recall)")
    include_tables: bool = Field(True, description="keep the text of tables")
    include_comments: bool = Field(False, description="trafilatura: keep readers' comments under the article")
    metadata: bool = Field(True, description="trafilatura: extract author, date, site name, description")


@register
class HtmlExtract(Mapper):
    """Replaces a page's HTML with its main text; writes `title`, adds page metadata to
    `meta`, rejects pages without main text (`no_main_text`)."""

    name = "html_extract"
    Params = HtmlExtractParams
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule("no_main_text", None, "stat.main_text_ratio", "edit",
             "replaces a page's HTML with its main text (trafilatura or resiliparse); rejects a page with none"),
    )

    def setup(self) -> None:
        if self.params.engine == "trafilatura":
            import trafilatura
            from trafilatura.settings import use_config

            self._extract = trafilatura.bare_extraction
            self._config = use_config()
            # The timeout uses signal.alarm, which only works in a main thread (not in Ray's).
            self._config.set("DEFAULT", "EXTRACTION_TIMEOUT", "0")
        else:
            from resiliparse.extract.html2text import extract_plain_text
            from resiliparse.parse.html import HTMLTree

            self._extract, self._parse = extract_plain_text, HTMLTree.parse
            # skip_elements only when tables go: passing its default (None) explicitly made
            # extract_plain_text about 10% slower in bench_web's interleaved measurement.
            self._resiliparse_options = {"main_content": True, "alt_texts": False, "noscript": False}
            if not self.params.include_tables:
                self._resiliparse_options["skip_elements"] = ["table"]

    def extract(self, html: str, url: str | None) -> tuple[str, str | None, dict[str, Any]]:
        """(main text, title, other metadata) of one page."""
        p = self.params
        if p.engine == "resiliparse":
            tree = self._parse(html)
            text = self._extract(tree, **self._resiliparse_options)
            return text, (tree.title or None), {}
        doc = self._extract(
            html, url=url, favor_precision=p.favor == "precision", favor_recall=p.favor == "recall",
            include_comments=p.include_comments, include_tables=p.include_tables,
            with_metadata=p.metadata, config=self._config)
        if doc is None:
            return "", None, {}
        meta = {key: getattr(doc, key, None) for key in META_KEYS} if p.metadata else {}
        return doc.text or "", doc.title or None, {k: v for k, v in meta.items() if v}

    @staticmethod
    def untable(text: str) -> str:
        """Layout-table rows split into their paragraphs; empty cells and edge pipes dropped."""
        if "|" not in text:
            return text
        lines = []
        for line in text.split("\n"):
            if "|" not in line:
                lines.append(line)
                continue
            cells = [cell for cell in CELL_SPLIT.split(line.strip()) if cell]
            if any(len(cell) >= LAYOUT_CELL_CHARS for cell in cells):
                lines.extend(cells)
            else:
                lines.append(" | ".join(cells))
        return "\n".join(lines)

    def map(self, batch: pa.Table) -> Outcome:
        n = batch.num_rows
        html_column = batch.column("text")
        urls = batch.column("url").to_pylist() if "url" in batch.column_names else [None] * n
        metas = batch.column("meta").to_pylist() if "meta" in batch.column_names else [None] * n
        # Main texts of the rows that have one; the others keep their `text` (a WET record's
        # text, a rejected page's HTML) from the Arrow column, never copied through Python.
        texts: list[str | None] = [None] * n
        titles: list[str | None] = [None] * n
        new_metas = list(metas)
        reasons: list[str | None] = [None] * n
        html_chars = np.zeros(n, np.int64)
        ratios = np.full(n, np.nan)
        # One page's HTML as a Python string at a time, not the batch's at once: the memory
        # of each page is reused for the next instead of being faulted in afresh (about 4%
        # of Resiliparse's time on the Readability pages, bench_web --speed).
        for i, scalar in enumerate(html_column):
            html = scalar.as_py()
            if html is None:
                continue
            if not HTML_HINT.search(html[:HINT_CHARS]):
                continue  # already text (a WET record)
            text, title, extra = self.extract(html, urls[i])
            text = self.untable(text)
            if "\n\n\n" in text:
                text = BLANK_LINES.sub("\n\n", text)
            text = text.strip()
            html_chars[i] = len(html)
            ratios[i] = len(text) / len(html) if html else 0.0
            titles[i] = title
            if not text:
                reasons[i] = "no_main_text"
                continue  # the HTML stays, for inspection in rejected/
            texts[i] = text
            if extra:
                merged = orjson.loads(metas[i]) if metas[i] else {}
                merged.update({k: v if isinstance(v, (str, int, float)) else str(v) for k, v in extra.items()})
                new_metas[i] = orjson.dumps(merged).decode()
        extracted = pa.array([text is not None for text in texts], pa.bool_())
        table = set_column(batch, "text", pc.if_else(extracted, pa.array(texts, pa.string()), html_column))
        table = set_column(table, "title", pa.array(titles, pa.string()))
        table = set_column(table, "meta", pa.array(new_metas, pa.string()))
        table = set_column(table, "stat.html_chars", pa.array(html_chars, pa.int64()))
        table = set_column(table, "stat.main_text_ratio", pa.array(ratios, pa.float64(), mask=np.isnan(ratios)))
        return Outcome(table, reasons)
