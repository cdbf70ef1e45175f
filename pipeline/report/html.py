"""The report page: the report model (see `pipeline.report`) as one self-contained HTML file.

Plots are matplotlib figures saved as SVG and embedded as data URIs, so the page needs no
network, no script and no file beside it, and it prints and zooms sharply. Each SVG is an
image of its own, so the ids matplotlib puts inside one never clash with another's. Output
is deterministic (fixed SVG hash salt, no dates), so the same model gives the same bytes.

Plot labels are mostly operator names and language codes; a source named in Chinese needs a
CJK font, which matplotlib's bundled DejaVu lacks: the first CJK font fontconfig knows is
added as a fallback, and without one non-ASCII labels are escaped rather than drawn as
boxes. Document text is plain HTML, where the browser's own fonts render Chinese.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

KEPT_COLOR = "#3b6ea8"
REJECTED_COLOR = "#d9822b"
LINE_COLORS = ["#b3261e", "#6a3d9a", "#1b7837", "#7f6000"]
CJK_FONTS = ["Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei",
             "WenQuanYi Zen Hei", "Droid Sans Fallback", "AR PL UMing CN", "SimHei"]
_cjk_font: str | bool | None = False  # False: not looked up yet


def _find_cjk_font() -> str | None:
    global _cjk_font
    if _cjk_font is False:
        from matplotlib import font_manager

        manager = font_manager.fontManager
        names = {f.name for f in manager.ttflist}
        if not any(n in names for n in CJK_FONTS):
            # Matplotlib caches the font list once; a CJK font installed since (`make browser`
            # installs one) is only found by looking at the system's fonts again.
            known = {f.fname for f in manager.ttflist}
            for path in font_manager.findSystemFonts():
                if path not in known:
                    try:
                        manager.addfont(path)
                    except (OSError, RuntimeError, ValueError):
                        continue
            names = {f.name for f in manager.ttflist}
        _cjk_font = next((n for n in CJK_FONTS if n in names), None)
    return _cjk_font or None


def plot_label(text: Any) -> str:
    """A label matplotlib can draw: CJK characters are escaped when no CJK font is installed.

    Matplotlib's default font (DejaVu Sans) covers Latin, Greek, Cyrillic and punctuation, so
    only characters from the CJK blocks on (U+2E80 and up) would render as empty boxes.
    """
    text = str(text)
    if all(ord(c) < 0x2E80 for c in text) or _find_cjk_font():
        return text
    return "".join(c if ord(c) < 0x2E80 else c.encode("ascii", "backslashreplace").decode()
                   for c in text)


# --------------------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return esc(value)


def plural(count: int, noun: str) -> str:
    return f"{num(count)} {noun}{'' if count == 1 else 's'}"


def pct(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if 0 < value < 10 ** -(digits + 2):
        return f"<{10 ** -digits:.{digits}f}%"
    return f"{value * 100:.{digits}f}%"


def size(value: int | None) -> str:
    if value is None:
        return "–"
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if value >= factor:
            return f"{value / factor:.1f} {unit}"
    return f"{value} B"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[int] = (),
          cls: str = "") -> str:
    """An HTML table; `rows` hold pre-escaped HTML; columns in `numeric` align right."""
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{esc(h)}</th>' for i, h in enumerate(headers))
    body = []
    for row in rows:
        row_cls = ""
        if row and isinstance(row[0], tuple):  # (class, cells...)
            row_cls, row = row[0][0], row[1:]
        cells = "".join(f'<td class="{"n" if i in numeric else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f'<tr class="{row_cls}">{cells}</tr>')
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _share(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def sampled_note(hists: Iterable[dict[str, Any]]) -> str:
    """What a sampled histogram's figures come from (see pipeline.report.data.HistogramBuilder),
    or nothing when every histogram was computed from all values."""
    sizes = [n for h in hists for n in (h.get("sample") or {}).values()]
    if not sizes:
        return ""
    return (f"<p>Histograms marked † have more values than the report samples: their bin edges and "
            f"their p1, median and p99 come from a uniform random sample (seeded) of up to "
            f"{num(max(sizes))} values each of the kept and the rejected documents; the counts in "
            f"every bin, the documents, means, minima and maxima are exact.</p>")


def sampled_mark(hist: dict[str, Any]) -> str:
    return " †" if hist.get("sample") else ""


# --------------------------------------------------------------------------- plots


class Plots:
    """matplotlib figures as SVG data URIs. Figures are built with `matplotlib.figure.Figure`
    (no pyplot state) inside one rc context of page-wide settings."""

    def __init__(self) -> None:
        # A CJK fallback font has no bold face: matplotlib would log that for every title.
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
        fonts = ["DejaVu Sans"] + ([_find_cjk_font()] if _find_cjk_font() else [])
        self.rc = {
            "svg.hashsalt": "kiln-report", "svg.fonttype": "path", "font.family": fonts, "font.size": 9,
            "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
            "axes.titlesize": 10, "axes.titleweight": "bold", "legend.frameon": False, "legend.fontsize": 8,
        }
        self.count = 0

    @contextlib.contextmanager
    def figure(self, width: float, height: float, ncols: int = 1,
               margins: dict[str, float] | None = None) -> Iterator[list[Any]]:
        """A figure with `ncols` axes; on leaving, laid out and kept for `image`. Fixed
        `margins` (fractions, as for `subplots_adjust`) skip the tight layout, which costs
        a third of a plot's time; histograms, the most numerous plots, have fixed labels."""
        import matplotlib
        from matplotlib.figure import Figure

        with matplotlib.rc_context(self.rc):
            fig = Figure(figsize=(width, height))
            axes = fig.subplots(1, ncols, squeeze=False)
            yield list(axes[0])
            if margins:
                fig.subplots_adjust(**margins)
            else:
                fig.tight_layout()
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
        self._svg = buffer.getvalue()

    def image(self, alt: str) -> str:
        self.count += 1
        data = base64.b64encode(self._svg.encode("utf-8")).decode("ascii")
        return f'<img class="plot" alt="{esc(alt)}" src="data:image/svg+xml;base64,{data}">'

    def histogram(self, hist: dict[str, Any], title: str, lines: dict[str, float] | None = None,
                  labels: tuple[str, str] = ("kept", "rejected"), width: float = 5.2) -> str:
        edges = hist.get("edges") or []
        margins = {"left": 0.75 / width, "right": 1 - 0.15 / width, "bottom": 0.13, "top": 0.9}
        with self.figure(width, 2.6, margins=margins) as (ax,):
            note = ""
            if edges:
                widths = [b - a for a, b in itertools.pairwise(edges)]
                for name, color, label in (("kept", KEPT_COLOR, labels[0]), ("rejected", REJECTED_COLOR, labels[1])):
                    counts = hist.get(name) or []
                    total = hist.get(f"count_{name}", 0)
                    if total:
                        ax.bar(edges[:-1], counts, width=widths, align="edge", color=color, alpha=0.6,
                               label=f"{label} ({total:,})", linewidth=0)
                if hist.get("scale") == "log":
                    ax.set_xscale("log")
                counts = [k + r for k, r in zip(hist.get("kept") or [0] * len(widths),
                                                hist.get("rejected") or [0] * len(widths))]
                total = sum(counts)
                # One bin holding nearly everything (rates that are mostly 0) hides the rest.
                if total and max(counts) > 0.8 * total and sum(1 for c in counts if c) > 1:
                    ax.set_yscale("log")
                    note = ", log count"
                for i, (name, value) in enumerate(sorted((lines or {}).items(), key=lambda kv: kv[1])):
                    ax.axvline(value, color=LINE_COLORS[i % len(LINE_COLORS)], linestyle="--", linewidth=1.2,
                               label=f"{plot_label(name)} = {value:,.4g}")
                ax.legend()
            else:
                ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
            clipped = (hist.get("below_range") or 0) + (hist.get("above_range") or 0)
            if clipped:
                note += f", {clipped:,} outliers in end bins"
            ax.set_title(plot_label(title) + sampled_mark(hist) + (f"  ({note[2:]})" if note else ""))
            ax.set_ylabel("documents")
        return self.image(f"histogram of {title}")

    def funnel(self, steps: list[dict[str, Any]], docs_in: int, analyze: bool) -> str:
        shown = [s for s in steps if s["dropped"] or s["kind"] != "reader"]
        labels = [plot_label(f"{s['stage']} · {s['label']}") for s in shown]
        with self.figure(7.5, 1.0 + 0.3 * (len(shown) + 1)) as (ax,):
            y = list(range(len(shown) + 1))
            going_on = [docs_in] + [s["docs_in"] if analyze else s["docs_out"] for s in shown]
            dropped = [0] + [s["dropped"] for s in shown]
            ax.barh(y, going_on, color=KEPT_COLOR, label="documents" if analyze else "documents going on")
            if not analyze:
                ax.barh(y, dropped, left=going_on, color=REJECTED_COLOR, label="rejected here")
            else:
                ax.barh(y, dropped, color=REJECTED_COLOR, label="would be rejected here")
            for yi, k, d in zip(y, going_on, dropped):
                text = f"{k:,}" + (f"  −{d:,}" if d else "")
                ax.text(k + (0 if analyze else d), yi, "  " + text, va="center", fontsize=8)
            ax.set_yticks(y, ["input", *labels])
            ax.invert_yaxis()
            ax.set_xlim(0, max(docs_in, 1) * 1.25)
            ax.set_xlabel("documents")
            ax.grid(axis="y", visible=False)
            ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
        return self.image("funnel: documents kept and rejected per operator")

    def shares(self, before: list[dict[str, Any]], after: list[dict[str, Any]], what: str) -> str:
        values = list(dict.fromkeys([r["value"] for r in before] + [r["value"] for r in after]))[:15]
        b = {r["value"]: r for r in before}
        a = {r["value"]: r for r in after}
        with self.figure(7.5, 1.1 + 0.3 * max(2, len(values)), ncols=2) as axes:
            for ax, key, title in ((axes[0], "docs_share", "documents"), (axes[1], "chars_share", "characters")):
                y = range(len(values))
                ax.barh([i - 0.2 for i in y], [b.get(v, {}).get(key, 0) * 100 for v in values], height=0.4,
                        color="#9aa9b8", label="before")
                ax.barh([i + 0.2 for i in y], [a.get(v, {}).get(key, 0) * 100 for v in values], height=0.4,
                        color=KEPT_COLOR, label="after")
                ax.set_yticks(list(y), [plot_label(v) for v in values])
                ax.invert_yaxis()
                ax.set_xlabel(f"% of {title}")
                ax.grid(axis="y", visible=False)
            axes[0].legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2)
        return self.image(f"{what} mix before and after")

    def bars(self, labels: list[str], series: dict[str, list[float]], title: str, ylabel: str = "",
             log: bool = False, width: float = 6.0) -> str:
        rotate = max((len(x) for x in labels), default=0) > 6
        with self.figure(width, 2.6, ncols=len(series)) as axes:
            for ax, (name, values), color in zip(axes, series.items(), [KEPT_COLOR, "#5b8c5a", "#8c6d31"]):
                ax.bar(range(len(labels)), values, color=color)
                ax.set_xticks(range(len(labels)), [plot_label(x) for x in labels], rotation=30 if rotate else 0,
                              ha="right" if rotate else "center")
                ax.set_title(plot_label(name if len(series) > 1 else title))
                if log:
                    ax.set_yscale("log")
                if ylabel:
                    ax.set_ylabel(ylabel)
                ax.grid(axis="x", visible=False)
        return self.image(title)

    def curves(self, series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str) -> str:
        """One line per series (x, y), e.g. training loss against trained tokens per arm."""
        with self.figure(7.0, 3.0) as (ax,):
            for i, (name, points) in enumerate(series.items()):
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, color=ARM_COLORS[i % len(ARM_COLORS)], linewidth=1.4, label=plot_label(name))
            ax.set_title(plot_label(title))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.legend()
        return self.image(title)


ARM_COLORS = ["#d9822b", KEPT_COLOR, "#1b7837", "#6a3d9a"]

# --------------------------------------------------------------------------- sections

SECTIONS = [
    ("overview", "Overview"),
    ("funnel", "Funnel"),
    ("mix", "Language and source mix"),
    ("evaluation", "Data evaluation"),
    ("statistics", "Statistics"),
    ("dedup", "Deduplication"),
    ("perplexity", "Perplexity"),
    ("buckets", "Buckets"),
    ("shards", "Shards"),
    ("ablation", "Ablation"),
    ("stages", "Stages"),
    ("config", "Configuration"),
]


def _doc(doc: dict[str, Any], heading: str = "") -> str:
    meta = " · ".join(esc(x) for x in (doc.get("id"), doc.get("source"), doc.get("lang")) if x)
    detail = f' <span class="detail">{esc(doc["detail"])}</span>' if doc.get("detail") else ""
    head = f"<b>{heading}</b> " if heading else ""
    return (f'<div class="doc"><div class="docmeta">{head}{meta}{detail}</div>'
            f'<div class="doctext">{esc(doc.get("text", ""))}</div></div>')


def _overview(m: dict[str, Any]) -> str:
    o = m["overview"]
    run = m["run"]
    kept_share = o["docs_out"] / o["docs_in"] if o["docs_in"] else None
    cards = [("documents in", num(o["docs_in"])), ("documents kept", f"{num(o['docs_out'])} ({pct(kept_share)})"),
             ("characters in → kept", f"{num(o['chars_in'])} → {num(o['chars_out'])}"),
             ("bytes in → kept", f"{size(o['bytes_in'])} → {size(o['bytes_out'])}"),
             ("stages", f"{o['stages']} ({o['seconds']:,.1f} s)")]
    if o.get("tokens") is not None:
        cards.append(("tokens in shards", num(o["tokens"])))
    verdict = o.get("verdict")
    if verdict:
        cards.append(("data evaluation", f'<span class="verdict {esc(verdict.replace(" ", "-"))}">'
                                         f"{esc(verdict)}</span>"))
    card_html = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>'
                        for k, v in cards)
    analyze = ('<p class="banner">Analyze run: every statistic was computed and nothing was dropped; '
               "“rejected” below means “would be rejected”.</p>") if run["analyze"] else ""
    config = f' · config <code>{esc(run["config"])}</code>' if run.get("config") else ""
    if run.get("analyze_run"):
        analyze += (f'<p class="sub">This run also has an analyze pass (every statistic, nothing dropped): '
                    f'<code>kiln report {esc(run["analyze_run"])}</code></p>')
    missing = [f"<li><b>{esc(dict(SECTIONS).get(k, k))}</b>: {esc(v)}</li>" for k, v in m["notes"].items()]
    missing_html = f'<details class="missing"><summary>Not in this run ({len(missing)})</summary><ul>{"".join(missing)}</ul></details>' if missing else ""
    return (f'<section id="overview"><h1>kiln report: {esc(run["name"])}</h1>'
            f'<p class="sub">run folder <code>{esc(run["folder"])}</code>{config}'
            f' · stages updated {esc(run["updated"])}</p>{analyze}<div class="cards">{card_html}</div>{missing_html}'
            "</section>")


def _funnel(m: dict[str, Any], plots: Plots) -> str:
    f = m.get("funnel")
    if not f:
        return _missing("funnel", m)
    analyze = f["analyze"]
    parts = ['<section id="funnel"><h2>Funnel</h2>',
             "<p>Each operator sees the documents the operators before it kept; the orange part of a bar is what "
             f"it {'would reject' if analyze else 'rejected'}. Percentages are of the operator's input and of the "
             "run's input. Characters are counted in the text as it was when the document was rejected.</p>",
             plots.funnel(f["steps"], f["docs_in"], analyze)]
    rows: list[Sequence[Any]] = []
    for st in f["stages"]:
        stage_dropped = sum(st["would_reject"].values()) if analyze else st["docs_in"] - st["docs_out"]
        rows.append((("stage",), f"<b>{esc(st['folder'])}</b>", num(st["docs_in"]), num(st["docs_out"]),
                     num(stage_dropped), pct(_share(stage_dropped, st["docs_in"]), 2),
                     pct(_share(stage_dropped, f["docs_in"]), 2), num(None if analyze else st["chars_rejected"]),
                     num(st["seconds"])))
        for step in (s for s in f["steps"] if s["stage"] == st["folder"]):
            rows.append((f"&nbsp;&nbsp;{esc(step['label'])} <span class=kind>{esc(step['kind'])}</span>",
                         num(step["docs_in"]), num(step["docs_out"]), num(step["dropped"]),
                         pct(step["share_of_op_input"], 2), pct(step["share_of_run_input"], 2),
                         num(step["chars_dropped"]), num(step["seconds"])))
            for r in step["reasons"]:
                rows.append((("reason",), f"&nbsp;&nbsp;&nbsp;&nbsp;↳ {esc(r['reason'])}", "", "", num(r["docs"]),
                             pct(r["share_of_op_input"], 2), pct(r["share_of_run_input"], 2), num(r["chars"]), ""))
    headers = ["stage / operator / reason", "docs in", "docs out", "would reject" if analyze else "rejected",
               "% of its input", "% of run input", "chars rejected", "seconds"]
    parts.append(table(headers, rows, numeric=range(1, 8), cls="funnel"))
    chars = [(st["folder"], st["chars_in"], st["chars_kept"], st["chars_rejected"], st["chars_edited_away"],
              st["bytes_in"], st["bytes_out"]) for st in f["stages"]]
    parts.append("<h3>Characters and bytes per stage</h3>")
    parts.append(table(["stage", "chars in", "chars kept", "chars in rejected docs", "chars edited away",
                        "bytes in", "bytes out"],
                       [(esc(c[0]), num(c[1]), num(c[2]), num(c[3]), num(c[4]), size(c[5]), size(c[6]))
                        for c in chars], numeric=range(1, 7)))
    parts.append(note("“chars edited away” are characters that operators removed from documents they kept "
                      "(normalization, line and sentence rules); stage 1's input is counted after its edits."))
    parts.append("</section>")
    return "".join(parts)


def _mix(m: dict[str, Any], plots: Plots) -> str:
    mix = m.get("mix") or {}
    if not mix:
        return _missing("mix", m, "no stage data to count")
    before, after = mix.get("before", {}), mix.get("after", {})
    parts = ['<section id="mix"><h2>Language and source mix</h2>',
             f"<p>Before: {esc(before.get('where'))}, {num(before.get('docs'))} documents. "
             f"After: {esc(after.get('where'))}, {num(after.get('docs'))} documents. "
             "A language shows as (unknown) where no operator had identified it yet.</p>"]
    for key, what in (("lang", "language"), ("source", "source")):
        parts.append(f"<h3>By {what}</h3>")
        parts.append(plots.shares(before.get(key, []), after.get(key, []), what))
        a = {r["value"]: r for r in after.get(key, [])}
        values = list(dict.fromkeys([r["value"] for r in before.get(key, [])] + list(a)))
        b = {r["value"]: r for r in before.get(key, [])}
        rows = []
        for v in values:
            rb, ra = b.get(v, {}), a.get(v, {})
            rows.append((esc(v), num(rb.get("docs", 0)), pct(rb.get("docs_share")), num(rb.get("chars", 0)),
                         num(ra.get("docs", 0)), pct(ra.get("docs_share")), num(ra.get("chars", 0)),
                         pct(ra.get("docs", 0) / rb["docs"]) if rb.get("docs") else "–"))
        parts.append(table([what, "docs before", "share", "chars before", "docs after", "share", "chars after",
                            "docs kept"], rows, numeric=range(1, 8)))
    parts.append("</section>")
    return "".join(parts)


def _evaluation(m: dict[str, Any], plots: Plots) -> str:
    ev = m.get("evaluation")
    if not ev:
        return _missing("evaluation", m)
    verdict = ev.get("verdict", "not evaluated")
    parts = ['<section id="evaluation"><h2>Data evaluation (Ziya2)</h2>',
             f"<p>A random sample of the final documents ({esc(ev['where'])}): {pct(ev['fraction'], 2)} of "
             f"{num(ev['population'])} documents, at least {num(ev['min_docs'])} and at most {num(ev['max_docs'])} "
             f"(seed {ev['seed']}), "
             f"<b>{num(ev.get('sample', 0))}</b> sampled. A document is <i>unqualified</i> when any judged "
             "rate exceeds its threshold; the data passes when at most 1 in 1,000 sampled documents is "
             "unqualified.</p>",
             f'<p class="verdictline"><span class="verdict {esc(verdict.replace(" ", "-"))}">{esc(verdict)}</span> '
             f"{esc(ev.get('verdict_note', ''))}</p>"]
    if ev.get("criteria"):
        rows = []
        for c in ev["criteria"]:
            if c["judged"]:
                limit = num(c["threshold"]) if c["threshold"] is not None else ""
                by_lang = ", ".join(f"{k}: {num(v)}" for k, v in c["thresholds_by_lang"].items())
                limit = ", ".join(x for x in (limit, by_lang) if x)
            else:
                limit = "not judged (no threshold)"
            rows.append((esc(c["criterion"]), f"<code>{esc(c['column'])}</code>", esc(c["description"]), limit,
                         num(c["scored"]), num(c["mean"]), num(c["p50"]), num(c["p99"]), num(c["max"]),
                         num(c["over"]) if c["judged"] else "–"))
        parts.append(table(["criterion", "column", "what", "threshold", "scored", "mean", "median", "p99", "max",
                            "over threshold"], rows, numeric=range(4, 10)))
        if "unqualified" in ev:
            parts.append(f"<p>Unqualified: <b>{num(ev['unqualified'])}</b> of {num(ev['sample'])} "
                         f"({pct(ev['unqualified_rate'], 2)}); 95% upper bound {pct(ev['upper_bound_95'], 2)}; "
                         f"{num(ev['docs_needed_for_confidence'])} sampled documents with none unqualified "
                         "show a rate below 0.1% at 95% confidence.</p>")
        grid = []
        for c in ev["criteria"]:
            lines = {"threshold": c["threshold"]} if c["judged"] and c["threshold"] is not None else {}
            grid.append(plots.histogram(c["histogram"], f"{c['criterion']} ({c['column']}) in the sample", lines,
                                        labels=("sampled", "")))
        parts.append(f'<div class="grid">{"".join(grid)}</div>')
        for c in ev["criteria"]:
            if c["examples"]:
                docs = "".join(_doc(d, f"{c['criterion']} = {num(d['value'])}") for d in c["examples"])
                parts.append(f"<details><summary>Highest {esc(c['criterion'])} in the sample "
                             f"({len(c['examples'])})</summary>{docs}</details>")
    if ev.get("unqualified_examples"):
        docs = "".join(_doc(d, "over: " + ", ".join(d["failed"])) for d in ev["unqualified_examples"])
        parts.append(f"<details><summary>Unqualified documents (first {len(ev['unqualified_examples'])})"
                     f"</summary>{docs}</details>")
    if ev.get("not_measured"):
        items = "".join(f"<li><b>{esc(c['criterion'])}</b> (<code>{esc(c['column'])}</code>): {esc(c['description'])}"
                        "</li>" for c in ev["not_measured"])
        parts.append(f"<p>Not measured in this run (no column; add the operator that writes it):</p><ul>{items}</ul>")
    if ev.get("random_examples"):
        docs = "".join(_doc(d) for d in ev["random_examples"])
        parts.append(f"<details><summary>Random documents from the sample ({len(ev['random_examples'])})</summary>"
                     f"{docs}</details>")
    parts.append("</section>")
    return "".join(parts)


def _statistics(m: dict[str, Any], plots: Plots) -> str:
    if not m.get("statistics"):
        return _missing("statistics", m)
    analyze = m["run"]["analyze"]
    labels = ("kept", "would be rejected") if analyze else ("kept", "rejected in this stage")
    parts = ['<section id="statistics"><h2>Statistics</h2>',
             "<p>Every numeric <code>stat.*</code> column, drawn in the stage where it first appears: the "
             "documents that stage kept and those it rejected. Values beyond the 0.1% and 99.9% quantiles of "
             "large columns are counted in the end bins.</p>", sampled_note(m["statistics"])]
    stages = list(dict.fromkeys(h["stage"] for h in m["statistics"]))
    for stage in stages:
        hists = [h for h in m["statistics"] if h["stage"] == stage]
        parts.append(f"<h3>{esc(stage)}</h3>")
        grid = [plots.histogram(h, h["column"], labels=labels) for h in hists]
        parts.append(f'<div class="grid">{"".join(grid)}</div>')
        rows = []
        for h in hists:
            k, r = h.get("summary_kept", {}), h.get("summary_rejected", {})
            rows.append((f"<code>{esc(h['column'])}</code>{sampled_mark(h)}", num(h["count_kept"]),
                         num(k.get("p01")), num(k.get("p50")), num(k.get("p99")), num(h["count_rejected"]),
                         num(r.get("p50"))))
        parts.append(table(["column", "kept", "p1", "median", "p99", labels[1], "median"], rows,
                           numeric=range(1, 7)))
    parts.append("</section>")
    return "".join(parts)


def _dedup(m: dict[str, Any], plots: Plots) -> str:
    if not m.get("dedup"):
        return _missing("dedup", m)
    parts = ['<section id="dedup"><h2>Deduplication</h2>']
    for d in m["dedup"]:
        parts.append(f"<h3>{esc(d['stage'])} · {esc(d['op'])}</h3>")
        parts.append(table(["clusters", "documents removed", "of stage input", "bytes removed", "largest cluster"],
                           [(num(d["clusters"]), num(d["docs_removed"]),
                             pct(d["docs_removed"] / d["docs_in"]) if d["docs_removed"] is not None and d["docs_in"]
                             else "–", size(d["bytes_removed"]), num(d["largest_cluster"]))],
                           numeric=range(5)))
        if d["cluster_sizes"]:
            sizes = d["cluster_sizes"]
            parts.append(plots.bars([str(s["size"]) for s in sizes], {"clusters": [s["clusters"] for s in sizes]},
                                    f"clusters by size (documents per cluster) · {d['op']}", "clusters",
                                    log=max(s["clusters"] for s in sizes) > 50 * max(1, min(s["clusters"] for s in sizes))))
    parts.append("</section>")
    return "".join(parts)


def _perplexity(m: dict[str, Any], plots: Plots) -> str:
    p = m.get("perplexity")
    if not p:
        return _missing("perplexity", m)
    analyze = m["run"]["analyze"]
    where = f"{esc(p['stage'])}" + (f" · {esc(p['op'])}" if p.get("op") else "")
    parts = ['<section id="perplexity"><h2>Perplexity</h2>',
             f"<p><code>{esc(p['column'])}</code> per language in {where}, kept and "
             f"{'would-be-rejected' if analyze else 'rejected'} documents, with the cut-offs the operator chose "
             "(dashed lines).</p>", sampled_note(p["per_lang"])]
    grid = [plots.histogram(h, f"{p['column']} · {h['lang']}", h["cutoffs"],
                            labels=("kept", "would be rejected" if analyze else "rejected")) for h in p["per_lang"]]
    parts.append(f'<div class="grid">{"".join(grid)}</div>')
    rows = [(esc(h["lang"]) + sampled_mark(h), num(h["count_kept"]), num(h.get("summary_kept", {}).get("p50")), num(h["count_rejected"]),
             esc(", ".join(f"{k} = {num(v)}" for k, v in h["cutoffs"].items()) or "–")) for h in p["per_lang"]]
    parts.append(table(["language", "kept", "median", "rejected", "cut-offs"], rows, numeric=range(1, 4)))
    parts.append("</section>")
    return "".join(parts)


def _buckets(m: dict[str, Any], plots: Plots) -> str:
    if not m.get("buckets"):
        return _missing("buckets", m)
    parts = ['<section id="buckets"><h2>Buckets</h2>']
    for b in m["buckets"]:
        parts.append(f"<h3>{esc(b['stage'])} · {esc(b['op'])}</h3>")
        rows = b["buckets"]
        labels = [f"{r['bucket']} {r['name'] or ''}".strip() for r in rows]
        series = {"documents": [r["docs"] or 0 for r in rows], "characters": [r["chars"] or 0 for r in rows]}
        if any(r["tokens"] is not None for r in rows):
            series["tokens"] = [r["tokens"] or 0 for r in rows]
        parts.append(plots.bars(labels, series, "per bucket", width=3.0 * len(series)))
        parts.append(table(["bucket", "name", "documents", "characters", "tokens", "low", "high"],
                           [(num(r["bucket"]), esc(r["name"]), num(r["docs"]), num(r["chars"]), num(r["tokens"]),
                             num(r["low"]), num(r["high"])) for r in rows], numeric=(0, 2, 3, 4, 5, 6)))
        if b.get("curriculum") is not None:
            parts.append(f"<p>Curriculum order (easy to hard): <code>{esc(json.dumps(b['curriculum']))}</code></p>")
    parts.append("</section>")
    return "".join(parts)


def _shards(m: dict[str, Any], plots: Plots) -> str:
    s = m.get("shards")
    if not s:
        return _missing("shards", m)
    if "error" in s:
        return f'<section id="shards"><h2>Shards</h2>{note("the shard manifest could not be read: " + s["error"])}</section>'
    parts = ['<section id="shards"><h2>Shards</h2>',
             table(["shards", "sequences", "seq_len", "tokens", "target tokens", "padding", "truncated", "documents"],
                   [(num(s["shards"]), num(s["sequences"]), num(s["seq_len"]), num(s["total_tokens"]),
                     num(s["target_tokens"]), num(s["padding_tokens"]), num(s["truncated_tokens"]),
                     num(s["documents"]))], numeric=range(8)),
             f"<p>Tokenizer <code>{esc(s['tokenizer']['path'])}</code>, vocabulary {num(s['tokenizer']['vocab_size'])}, "
             f"sha256 <code>{esc((s['tokenizer']['sha256'] or '')[:16])}</code>; packing {esc(s['pack_mode'])}; "
             f"curriculum {esc(json.dumps(s['curriculum']))}.</p>"]
    if s["missing_files"]:
        parts.append(note(f"{len(s['missing_files'])} shard files named in the manifest are missing, e.g. "
                          f"{s['missing_files'][0]}"))
    series = []
    if s["tokens_by_bucket"]:
        labels = [f"{b['bucket']} {b['name']}".strip() for b in s["tokens_by_bucket"]]
        series.append(plots.bars(labels, {"tokens": [b["tokens"] for b in s["tokens_by_bucket"]]}, "tokens per bucket",
                                 width=4.0))
    for key, title in (("tokens_by_source", "tokens per source"), ("tokens_by_lang", "tokens per language")):
        if s[key]:
            series.append(plots.bars(list(s[key]), {"tokens": list(s[key].values())}, title, width=4.0))
    parts.append(f'<div class="grid">{"".join(series)}</div>')
    rows = [(esc(r["path"]), num(r["bucket"]), esc(r["source"]), num(r["sequences"]), num(r["tokens"]),
             num(r["padding_tokens"])) for r in s["shard_rows"]]
    more = f" (first {len(rows)} of {s['shards']:,})" if s["shards"] > len(rows) else ""
    parts.append(f"<details><summary>Shard files{more}</summary>"
                 + table(["file", "bucket", "source", "sequences", "tokens", "padding"], rows, numeric=(1, 3, 4, 5))
                 + "</details></section>")
    return "".join(parts)


def _ablation(m: dict[str, Any], plots: Plots) -> str:
    a = m.get("ablation")
    if not a:  # only the clean run of a `kiln ablate` has this section
        return ""
    if "error" in a:
        return f'<section id="ablation"><h2>Ablation</h2>{note(a["error"])}</section>'
    split, leak = a.get("split") or {}, a.get("leak_check") or {}
    parts = ['<section id="ablation"><h2>Ablation: does this cleaning make a better model?</h2>',
             f"<p>The same model trained on <b>{num(a['budget_tokens'])}</b> tokens of each arm, from one raw corpus "
             f"(the inputs of <code>{esc(a['pipeline'])}</code>): <i>raw</i> is the training documents tokenized "
             "only; <i>clean</i> is this run's output; <i>curriculum</i> is the clean shards in bucket order. "
             f"Each is scored on the same held-out documents as cleaned ({num(a['heldout_clean_docs'])}), and on "
             f"the held-out documents raw ({num(a['heldout_raw_docs'])}). Lower perplexity and bits per byte are "
             "better; all arms share one tokenizer, so their perplexities compare.</p>"]
    rows = a["rows"]
    langs = sorted({lang for r in rows for lang in r["ppl_by_lang"]})
    headers = ["arm", "documents", "target tokens", "trained tokens", "final train loss", "ppl held-out clean",
               "bits/byte clean", *[f"ppl {lang}" for lang in langs], "ppl held-out raw", "train seconds"]
    body = [(f"<b>{esc(r['arm'])}</b>", num(r["documents"]), num(r["target_tokens"]), num(r["trained_tokens"]),
             num(r["final_loss"]), num(r["ppl_clean"]),
             f"{r['bpb_clean']:.4f}" if r.get("bpb_clean") is not None else "–",
             *[num(r["ppl_by_lang"].get(lang)) for lang in langs], num(r["ppl_raw"]), num(r["train_seconds"]))
            for r in rows]
    parts.append(table(headers, body, numeric=range(1, len(headers))))
    base = next((r for r in rows if r["arm"] == "raw"), None)
    if base and base.get("ppl_clean"):
        for r in rows:
            if r is not base and r.get("ppl_clean"):
                change = r["ppl_clean"] / base["ppl_clean"] - 1
                parts.append(f"<p><b>{esc(r['arm'])}</b> vs raw on held-out clean text: perplexity "
                             f"{num(base['ppl_clean'])} → {num(r['ppl_clean'])} ({change:+.1%}).</p>")
    if a.get("curriculum_coverage") and not a["curriculum_coverage"].get("all_buckets", True):
        reached = ", ".join(f"{r['bucket']} ({pct(r['share_trained'], 0)})" for r in a["curriculum_coverage"]["buckets"])
        parts.append(note(f"The curriculum arm's budget reached buckets {reached} only: it trained on the easier "
                          "documents, a different mix from the clean arm's, not the same data in another order."))
    curves = {arm: [(p["tokens"], p["loss"]) for p in points] for arm, points in a["curves"].items()}
    if any(curves.values()):
        parts.append(plots.curves(curves, "training loss per arm", "trained tokens", "loss"))
    if rows and rows[0]["ppl_by_source"]:
        sources = sorted({s for r in rows for s in r["ppl_by_source"]})
        parts.append("<h3>Held-out clean perplexity by source</h3>")
        parts.append(table(["arm", *sources], [(esc(r["arm"]), *[num(r["ppl_by_source"].get(s)) for s in sources])
                                               for r in rows], numeric=range(1, len(sources) + 1)))
    arms_checked = {k: v for k, v in leak.items() if isinstance(v, dict)}
    checked = sum(v.get("documents_checked", 0) for v in arms_checked.values())
    found = sum(v.get("heldout_found", 0) for v in arms_checked.values())
    parts.append(f"<p>Split by salted sha256 of each document's text before any arm was built: "
                 f"{num(split.get('train_docs'))} training and {num(split.get('heldout_docs'))} held-out documents "
                 f"({pct(split.get('heldout_fraction'))} asked); held-out hashes in "
                 f"<code>{esc(split.get('heldout_hashes_file'))}</code>. Leak check: {num(found)} of "
                 f"{num(checked)} training documents of the arms carry a held-out hash.</p>")
    parts.append(f"<p>Tokenizer <code>{esc(a.get('tokenizer'))}</code>; model "
                 f"<code>{esc(json.dumps(a.get('model'), sort_keys=True))}</code>; ablation config "
                 f"<code>{esc(a.get('config'))}</code>; results <code>{esc(a.get('results'))}</code> "
                 f"(the last <code>kiln ablate</code> took {num(a.get('seconds'))} s; work it reused is not "
                 "counted).</p></section>")
    return "".join(parts)


def _stages(m: dict[str, Any]) -> str:
    parts = ['<section id="stages"><h2>Stages</h2>',
             "<p>Per stage: operators with their timing, the statistics operators reported, and example "
             "documents for each rejection reason.</p>"]
    for st in m["stages"]:
        parts.append(f'<h3 id="stage-{esc(st["folder"])}">{esc(st["folder"])}</h3>')
        if st.get("missing"):
            parts.append(note(st["missing"]))
        rows = [(esc(op.get("label")), esc(op.get("kind")), num(op.get("docs_in")), num(op.get("rejected")),
                 num(op.get("seconds")), num(op.get("docs_per_s"))) for op in st["ops"]]
        parts.append(table(["operator", "kind", "docs in", "rejected", "seconds", "docs/s"], rows, numeric=(2, 3, 4, 5)))
        if st.get("stat_columns_new"):
            cols = ", ".join(f"<code>{esc(c)}</code>" for c in st["stat_columns_new"])
            parts.append(f"<p>New statistic columns: {cols}.</p>")
        if st.get("stat_columns_not_numeric"):
            cols = ", ".join(f"<code>{esc(c)}</code>" for c in st["stat_columns_not_numeric"])
            parts.append(f"<p>Not drawn (not numeric): {cols}.</p>")
        for label, extra in st["extra"].items():
            rows = [(esc(k), num(v) if not isinstance(v, str) else esc(v)) for k, v in extra["scalars"].items()]
            body = table(["statistic", "value"], rows, numeric=(1,)) if rows else ""
            for k, v in extra["nested"].items():
                body += f"<p><b>{esc(k)}</b></p><pre>{esc(v)}</pre>"
            parts.append(f"<details><summary>Statistics reported by {esc(label)}</summary>{body}</details>")
        for label, docs in (st.get("rejected_examples") or {}).items():
            count = st["rejected"].get(label)
            how_many = f" ({plural(count, 'document')})" if count else ""
            parts.append(f"<details><summary>Rejected as <b>{esc(label)}</b>{how_many}: "
                         f"{plural(len(docs), 'example')}</summary>"
                         + "".join(_doc(d) for d in docs) + "</details>")
    parts.append("</section>")
    return "".join(parts)


def _config(m: dict[str, Any]) -> str:
    if not m.get("config_yaml"):
        return '<section id="config"><h2>Configuration</h2>' + note("no config.yaml in the run folder") + "</section>"
    return (f'<section id="config"><h2>Configuration</h2><details><summary>config.yaml as run</summary>'
            f"<pre>{esc(m['config_yaml'])}</pre></details></section>")


def _missing(key: str, m: dict[str, Any], text: str | None = None) -> str:
    title = dict(SECTIONS)[key]
    return f'<section id="{key}" class="absent"><h2>{esc(title)}</h2>{note(text or m["notes"].get(key, "not in this run"))}</section>'


CSS = """
:root { --fg:#1d2430; --muted:#5b6675; --line:#dfe3e8; --bg:#fff; --soft:#f5f7f9; --accent:#3b6ea8; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:var(--bg); font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
  "Noto Sans","Noto Sans CJK SC","PingFang SC","Microsoft YaHei","WenQuanYi Micro Hei",sans-serif; }
.layout { display:flex; align-items:flex-start; }
nav { position:sticky; top:0; flex:0 0 210px; height:100vh; overflow-y:auto; padding:22px 14px;
  border-right:1px solid var(--line); background:var(--soft); font-size:14px; }
nav .brand { font-weight:700; margin-bottom:10px; }
nav a { display:block; color:var(--fg); text-decoration:none; padding:3px 8px; border-radius:4px; }
nav a:hover { background:#e6ebf0; }
nav a.absent { color:#9aa3ad; } nav a.sub { padding-left:22px; font-size:13px; }
main { flex:1; min-width:0; max-width:1120px; padding:10px 36px 60px; }
section { padding-top:8px; border-bottom:1px solid var(--line); padding-bottom:18px; }
h1 { font-size:26px; margin:14px 0 4px; } h2 { font-size:21px; margin:22px 0 8px; }
h3 { font-size:16px; margin:18px 0 6px; }
.sub, .note { color:var(--muted); } .note { font-style:italic; }
section.absent h2 { color:var(--muted); }
code, pre { font-family:ui-monospace,"DejaVu Sans Mono",Menlo,monospace; font-size:13px; }
pre { background:var(--soft); padding:10px; overflow-x:auto; white-space:pre-wrap; word-break:break-all; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:12px 0; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:150px; }
.card .k { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .v { font-size:18px; font-weight:600; font-variant-numeric:tabular-nums; }
.banner { background:#fff4e0; border:1px solid #f0c36d; padding:8px 12px; border-radius:6px; }
table { border-collapse:collapse; margin:8px 0 12px; font-size:13.5px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:var(--soft); font-weight:600; }
td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.stage td { background:#eef3f8; } tr.reason td { color:var(--muted); }
.kind { color:var(--muted); font-size:12px; }
img.plot { display:block; max-width:100%; height:auto; margin:8px 0; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(440px,1fr)); gap:6px 18px; }
details { margin:6px 0; } summary { cursor:pointer; color:var(--accent); }
.doc { border-left:3px solid var(--line); margin:8px 0 8px 6px; padding:2px 10px; }
.docmeta { color:var(--muted); font-size:12.5px; } .detail { color:#8a4b08; }
.doctext { white-space:pre-wrap; word-break:break-word; font-size:14px; }
.verdict { display:inline-block; padding:1px 10px; border-radius:10px; font-weight:700; color:#fff; background:#7b8794; }
.verdict.pass { background:#2e7d32; } .verdict.fail { background:#c62828; }
.missing ul { margin:4px 0; color:var(--muted); }
footer { color:var(--muted); font-size:12.5px; margin-top:20px; }
@media (max-width: 900px) { nav { display:none; } main { padding:10px 16px; } }
@media print { nav { display:none; } }
"""


def render_html(m: dict[str, Any]) -> str:
    """The whole page."""
    plots = Plots()
    body = [_overview(m), _funnel(m, plots), _mix(m, plots), _evaluation(m, plots), _statistics(m, plots),
            _dedup(m, plots), _perplexity(m, plots), _buckets(m, plots), _shards(m, plots), _ablation(m, plots), _stages(m), _config(m)]
    absent = {k for k in m["notes"]}
    stage_links = "".join(f'<a class="sub" href="#stage-{esc(s["folder"])}">{esc(s["folder"])}</a>' for s in m["stages"])
    toc = "".join(f'<a href="#{k}" class="{"absent" if k in absent else ""}">{esc(t)}</a>'
                  + (stage_links if k == "stages" else "") for k, t in SECTIONS
                  if k != "ablation" or m.get("ablation"))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>kiln report: {esc(m['run']['name'])}</title><style>{CSS}</style></head><body>"
        f'<div class="layout"><nav><div class="brand">kiln report</div>{toc}</nav>'
        f'<main>{"".join(body)}<footer>Written by <code>kiln report</code> from {esc(m["run"]["folder"])}; '
        f"every number on this page is also in report.json. {plots.count} plots.</footer></main></div>"
        "</body></html>\n"
    )
