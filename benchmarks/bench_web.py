"""Web recipe quality and speed on real pages with known main content.

Quality (`--quality`): Mozilla Readability's test pages (../shared/data/web_readability_testpages:
each page's raw `source.html` and the main content a person marked, `expected.html`) go
through a stage's operators (default: the ops of configs/pipeline/web.yaml: html_extract and
the web rules), in process. Per page:

- must-keep sentences: the sentences of the expected main text (lines split at sentence
  ends; at least 4 words, or 8 Han characters);
- furniture lines: lines of the whole page's text (every visible line, Resiliparse without
  main-content detection) that appear nowhere in the expected main text (at least 2 words,
  or 4 Han characters);

a sentence is kept when its normalised form (case, spaces and punctuation folded) is inside
the output's, a furniture line is removed when it is not. A page the recipe rejects keeps
nothing. Reported: the share of must-keep sentences kept and of furniture lines removed, over
all pages (micro) and the mean per page; `--pages` restricts to a list, `--split` gives
both halves of a fixed split (pages sorted by name, every other one) to show that figures do
not come from tuning to individual pages.

Speed (`--speed`): readers and extraction in docs/s per CPU second of one process on these
pages (and the WARC samples): kiln's WARC reader against FastWARC's iterator alone, and
html_extract (trafilatura, resiliparse) through `run_operators` against calling the library
directly on the same HTML.

datatrove (`--datatrove`, needs `.venv-bench`, `make bench-env`): datatrove's `Trafilatura`
extractor step, as its pipelines run it (each page sent to a sandbox child process), with its
default settings (favour precision, deduplicate, 1 s timeout a page) and with settings close to
html_extract's, on the same pages, in a `.venv-bench` subprocess (datatrove pins its own
trafilatura). CPU seconds count the worker and its sandbox children; one datatrove round and
one round of kiln's html_extract (trafilatura) take turns. Quality is scored as above on each
side's extraction alone.

    python benchmarks/bench_web.py --quality            # make bench-web runs both
    python benchmarks/bench_web.py --speed --repeat 3
    python benchmarks/bench_web.py --datatrove --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PAGES = SHARED / "web_readability_testpages" / "test-pages"
WARCS = SHARED / "web_warc_samples"
BENCH_PYTHON = REPO / ".venv-bench" / "bin" / "python"
sys.path.insert(0, str(REPO))

SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\u3040-\u30ff]")
NOT_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return NOT_WORD.sub(" ", text).strip()


def size(text: str) -> tuple[int, int]:
    return len(text.split()), len(HAN.findall(text))


def visible_lines(html: str, main_content: bool = False) -> list[str]:
    from resiliparse.extract.html2text import extract_plain_text

    text = extract_plain_text(html, main_content=main_content, alt_texts=False, noscript=False,
                              comments=not main_content)
    return [line.strip() for line in text.splitlines() if line.strip()]


def must_keep(expected_html: str) -> list[str]:
    sentences = []
    for line in visible_lines(expected_html):
        for sentence in SENTENCE_END.split(line):
            words, han = size(sentence)
            if words >= 4 or han >= 8:
                sentences.append(normalise(sentence))
    return [s for s in sentences if s]


def furniture(source_html: str, expected_norm: str) -> list[str]:
    lines = []
    for line in visible_lines(source_html):
        words, han = size(line)
        norm = normalise(line)
        if (words >= 2 or han >= 4) and norm and norm not in expected_norm:
            lines.append(norm)
    return lines


PLACEHOLDER = re.compile(r"lorem ipsum", re.I)


def load_pages(names: list[str] | None = None, placeholders: list[str] | None = None) -> list[dict]:
    """The test pages; those whose expected main text is placeholder text (Readability's
    synthetic "Lorem ipsum" fixtures, which C4's rule rightly drops) are left out and their
    names appended to `placeholders`."""
    pages = []
    for folder in sorted(PAGES.iterdir()):
        if names and folder.name not in names:
            continue
        source = (folder / "source.html").read_text("utf-8", errors="replace")
        expected_html = (folder / "expected.html").read_text("utf-8", errors="replace")
        if PLACEHOLDER.search(" ".join(visible_lines(expected_html))):
            if placeholders is not None:
                placeholders.append(folder.name)
            continue
        keep = must_keep(expected_html)
        expected_norm = " ".join(normalise(line) for line in visible_lines(expected_html))
        pages.append({"name": folder.name, "html": source, "keep": keep,
                      "furniture": furniture(source, expected_norm)})
    return pages


def stage_ops(config: Path, stage: str | None):
    from pipeline.config import load_config

    cfg = load_config(str(config))
    chosen = [s for s in cfg.stages if stage is None or s.name == stage]
    if not chosen:
        raise SystemExit(f"{config}: no stage {stage!r}")
    ops = []
    for spec in (op for s in chosen for op in s.ops):
        if spec.name == "tokenize_pack":
            continue  # packing changes no text
        op = spec.build()
        if op.kind == "global":
            continue  # dedup and friends need the corpus; they do not change one page
        ops.append(op)
    return ops


def run_recipe(pages: list[dict], ops) -> list[str | None]:
    import pyarrow as pa

    from operators.base import REJECT_OP, run_operators

    table = pa.table({"id": [p["name"] for p in pages], "text": [p["html"] for p in pages],
                      "source": ["readability"] * len(pages), "lang": pa.nulls(len(pages), pa.string()),
                      "url": pa.nulls(len(pages), pa.string()), "meta": pa.nulls(len(pages), pa.string())})
    out = run_operators(ops, table)
    texts = dict(zip(out.column("id").to_pylist(), out.column("text").to_pylist()))
    rejected = dict(zip(out.column("id").to_pylist(), out.column(REJECT_OP).to_pylist())) \
        if REJECT_OP in out.column_names else {}
    reasons = dict(zip(out.column("id").to_pylist(), out.column("reject_reason").to_pylist())) \
        if "reject_reason" in out.column_names else {}
    return [None if rejected.get(p["name"]) else texts[p["name"]] for p in pages], \
        [f"{rejected.get(p['name'])}/{reasons.get(p['name'])}" if rejected.get(p["name"]) else None for p in pages]


def score(pages: list[dict], outputs: list[str | None]) -> dict:
    kept = keep_total = removed = furniture_total = 0
    per_page = []
    for page, output in zip(pages, outputs):
        norm = normalise(output) if output else ""
        k = sum(1 for s in page["keep"] if norm and s in norm)
        r = sum(1 for line in page["furniture"] if not norm or line not in norm)
        kept, keep_total = kept + k, keep_total + len(page["keep"])
        removed, furniture_total = removed + r, furniture_total + len(page["furniture"])
        per_page.append({"page": page["name"], "keep": len(page["keep"]), "kept": k,
                         "furniture": len(page["furniture"]), "removed": r})
    pages_keep = [p["kept"] / p["keep"] for p in per_page if p["keep"]]
    pages_removed = [p["removed"] / p["furniture"] for p in per_page if p["furniture"]]
    return {"pages": len(pages), "sentences": keep_total, "furniture_lines": furniture_total,
            "kept": round(kept / max(1, keep_total), 4), "removed": round(removed / max(1, furniture_total), 4),
            "kept_mean_per_page": round(sum(pages_keep) / max(1, len(pages_keep)), 4),
            "removed_mean_per_page": round(sum(pages_removed) / max(1, len(pages_removed)), 4),
            "per_page": per_page}


def quality(args) -> dict:
    placeholders: list[str] = []
    pages = load_pages(args.pages, placeholders)
    ops = stage_ops(Path(args.config), args.stage)
    outputs, reasons = run_recipe(pages, ops)
    result = score(pages, outputs)
    result["rejected_pages"] = {p["name"]: r for p, r in zip(pages, reasons) if r}
    result["placeholder_pages_left_out"] = len(placeholders)
    result["crawl_sample"] = crawl_sample(ops)
    if args.split:
        for half in (0, 1):
            chosen = [i for i in range(len(pages)) if i % 2 == half]
            part = score([pages[i] for i in chosen], [outputs[i] for i in chosen])
            result[f"half_{half}"] = {k: v for k, v in part.items() if k != "per_page"}
    return result


def crawl_sample(ops) -> dict:
    """The other side: what the recipe does to the 16 pages of a real Common Crawl excerpt
    (Chinese portals, spam and adult sites among them), page by page."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from common.inputs import InputSpec
    from common.readers import read_inputs
    from operators.base import REJECT_OP, run_operators

    spec = InputSpec(path=str(WARCS / "resiliparse/warcfile.warc.gz"))
    table = pa.concat_tables(list(read_inputs([spec])))
    table = table.filter(pc.is_null(table.column("reject_reason"))).drop_columns(
        ["reject_op", "reject_reason", "reject_detail"])
    out = run_operators(ops, table)
    verdicts = {}
    for row in out.to_pylist():
        verdicts[row["url"]] = (f"{row[REJECT_OP]}/{row['reject_reason']}" if row.get(REJECT_OP)
                                else f"kept ({len(row['text'])} chars, {row['lang']})")
    return verdicts


# --------------------------------------------------------------------------- speed


def timed(fns: dict, repeat: int) -> dict[str, float]:
    """Fastest process CPU time of each function over `repeat` rounds, after a warm-up round.
    The functions take turns within a round, so caches and the machine's load treat them alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - started)
    return best


def speed(args) -> dict:
    import pyarrow as pa
    import trafilatura
    from fastwarc.warc import ArchiveIterator
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    from common.inputs import InputSpec
    from common.readers import read_inputs
    from operators.base import run_operators
    from operators.html import HtmlExtract

    pages = [p["html"] for p in load_pages(args.pages)]
    table = pa.table({"id": [str(i) for i in range(len(pages))], "text": pages,
                      "url": pa.nulls(len(pages), pa.string()), "meta": pa.nulls(len(pages), pa.string())})
    results: dict = {"pages": len(pages), "html_mb": round(sum(len(p) for p in pages) / 1e6, 2)}
    trafilatura_op = HtmlExtract({"engine": "trafilatura"})
    trafilatura_op.ensure_setup()
    config = trafilatura_op._config
    resiliparse_op = HtmlExtract({"engine": "resiliparse"})

    def direct_trafilatura():
        for html in pages:
            trafilatura.bare_extraction(html, with_metadata=True, include_comments=False, config=config)

    def direct_resiliparse():
        for html in pages:
            tree = HTMLTree.parse(html)
            extract_plain_text(tree, main_content=True, alt_texts=False, noscript=False)
            _ = tree.title

    for pair in ({"trafilatura_direct": direct_trafilatura,
                  "trafilatura_html_extract": lambda: run_operators([trafilatura_op], table)},
                 {"resiliparse_direct": direct_resiliparse,
                  "resiliparse_html_extract": lambda: run_operators([resiliparse_op], table)}):
        for name, seconds in timed(pair, args.repeat).items():
            results[name] = {"cpu_s": round(seconds, 3), "docs_per_cpu_s": round(len(pages) / seconds, 1)}
    for engine in ("trafilatura", "resiliparse"):
        direct, kiln = results[f"{engine}_direct"]["cpu_s"], results[f"{engine}_html_extract"]["cpu_s"]
        results[f"{engine}_overhead"] = round(kiln / direct - 1, 4)

    # kiln's own work, measured apart because the difference of two 0.3 s figures drowns in a
    # shared machine's noise: html_extract with the engine's results replayed (the extraction
    # itself then costs nothing), and within it, turning the Arrow column of HTML into the
    # Python strings the engines take (the direct calls above start from Python strings).
    replayed = [resiliparse_op.extract(html, None) for html in pages]
    replay_op = HtmlExtract({"engine": "resiliparse"})
    replay_op.ensure_setup()

    def html_extract_replayed():
        results_iter = iter(replayed)
        replay_op.extract = lambda html, url: next(results_iter)
        run_operators([replay_op], table)

    html_column = table.column("text")
    own = timed({"html_extract_own_work": html_extract_replayed,
                 "arrow_to_python_strings": html_column.to_pylist}, args.repeat * 3)
    for name, seconds in own.items():
        results[name] = {"cpu_s": round(seconds, 4),
                         "share_of_resiliparse_direct": round(seconds / results["resiliparse_direct"]["cpu_s"], 4)}

    # Readers: every record of the WARC samples that FastWARC reads, many times over.
    warcs = [p for p in sorted(WARCS.glob("*/*.warc*")) if "bad" not in p.name and "trunc" not in p.name
             and not p.name.endswith(".txt")]
    spec = InputSpec(path="x", format="warc")
    rounds = 20

    def direct_fastwarc():
        n = 0
        for _ in range(rounds):
            for path in warcs:
                with open(path, "rb") as f:
                    for record in ArchiveIterator(f, parse_http=True):
                        record.reader.read()
                        n += 1
        return n

    def kiln_reader():
        n = 0
        for _ in range(rounds):
            for path in warcs:
                for batch in read_inputs([spec.model_copy(update={"path": str(path)})]):
                    n += batch.num_rows
        return n

    records = direct_fastwarc() // rounds
    for name, seconds in timed({"fastwarc_iterate": direct_fastwarc, "kiln_warc_reader": kiln_reader},
                               args.repeat).items():
        results[name] = {"cpu_s": round(seconds, 3), "records_per_cpu_s": round(records * rounds / seconds, 1)}
    results["warc_records"] = records
    results["warc_files"] = len(warcs)
    return results


# --------------------------------------------------------------------------- datatrove

# datatrove's Trafilatura step: as shipped, and with html_extract's choices (trafilatura's
# balanced mode, no deduplication of repeated text, tables kept; html_extract also extracts
# metadata, which datatrove's plain-text output does not). Both get a 60 s timeout a page
# (`--datatrove-timeout`): datatrove's default of 1 s of wall time drops slow pages on a
# loaded machine, which would make both the speed and the quality figures depend on the load.
DATATROVE_CONFIGS = {
    "datatrove_default": {},
    "datatrove_like_html_extract": {"favour_precision": False, "deduplicate": False, "include_tables": True},
}


def datatrove_worker(path: str, timeout: float) -> dict:
    """Runs in .venv-bench (datatrove and the standard library only): one timed pass of each
    configuration over the pages in `path` (a JSON list of HTML strings)."""
    import resource

    import trafilatura  # imported before the sandbox forks, as in a pipeline
    from datatrove.data import Document
    from datatrove.pipeline.extractors import Trafilatura

    pages = json.loads(Path(path).read_text(encoding="utf-8"))

    def cpu() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    results = {}
    for name, kwargs in DATATROVE_CONFIGS.items():
        kwargs = {**kwargs, "timeout": timeout}
        list(Trafilatura(**kwargs).run(iter([Document(text=pages[0], id="warm-up")])))
        step = Trafilatura(**kwargs)
        docs = [Document(text=html, id=str(i)) for i, html in enumerate(pages)]
        started = cpu()  # the sandbox child is reaped when the step's generator ends
        texts = {doc.id: doc.text for doc in step.run(iter(docs))}
        seconds = cpu() - started
        counts = {label: getattr(metric, "total", metric) for label, metric in step.stats.stats.items()}
        results[name] = {"cpu_s": seconds, "texts": [texts.get(str(i)) for i in range(len(pages))],
                         "counts": {k: v for k, v in counts.items() if isinstance(v, (int, float))}}
    from importlib.metadata import version

    results["versions"] = {"datatrove": version("datatrove"),
                           "trafilatura": trafilatura.__version__}
    return results


def datatrove_compare(args) -> dict:
    """datatrove's Trafilatura step against html_extract (trafilatura): speed, rounds
    interleaved, and quality of each extraction alone."""
    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: `make bench-env` builds it")
    import pyarrow as pa

    from operators.base import run_operators
    from operators.html import HtmlExtract

    pages = load_pages(args.pages)
    htmls = [p["html"] for p in pages]
    table = pa.table({"id": [str(i) for i in range(len(htmls))], "text": htmls,
                      "url": pa.nulls(len(htmls), pa.string()), "meta": pa.nulls(len(htmls), pa.string())})
    op = HtmlExtract({"engine": "trafilatura"})
    # Without metadata (author, date, site name), as datatrove's plain-text extraction.
    op_plain = HtmlExtract({"engine": "trafilatura", "metadata": False})
    for each in (op, op_plain):
        each.ensure_setup()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(htmls, f)
        path = f.name
    env = {**os.environ, "PYTHONPATH": "", "LOGURU_LEVEL": "ERROR", "OMP_NUM_THREADS": "1"}
    best: dict[str, float] = {}
    last: dict = {}
    try:
        for round_ in range(args.repeat + 1):  # round 0 warms both sides up and does not count
            seconds = {}
            for name, each in (("html_extract_trafilatura", op), ("html_extract_trafilatura_no_metadata", op_plain)):
                started = time.process_time()
                run_operators([each], table)
                seconds[name] = time.process_time() - started
            proc = subprocess.run([str(BENCH_PYTHON), __file__, "--datatrove-worker", path,
                                   "--datatrove-timeout", str(args.datatrove_timeout)],
                                  capture_output=True, text=True, env=env, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"datatrove worker failed: {proc.stderr.strip()[-2000:]}")
            last = json.loads(proc.stdout.strip().splitlines()[-1])
            seconds.update({name: last[name]["cpu_s"] for name in DATATROVE_CONFIGS})
            if round_:
                for name, s in seconds.items():
                    best[name] = min(best.get(name, float("inf")), s)
    finally:
        os.unlink(path)
    results: dict = {"pages": len(pages), "versions": last["versions"], "timeout_s": args.datatrove_timeout}
    for name, s in best.items():
        results[name] = {"cpu_s": round(s, 3), "docs_per_cpu_s": round(len(pages) / s, 1)}
    kiln_texts = run_recipe(pages, [op])[0]
    for name, texts in {"html_extract_trafilatura": kiln_texts,
                        "html_extract_trafilatura_no_metadata": run_recipe(pages, [op_plain])[0],
                        **{n: last[n]["texts"] for n in DATATROVE_CONFIGS}}.items():
        q = score(pages, texts)
        results[name].update({k: q[k] for k in ("kept", "removed", "kept_mean_per_page", "removed_mean_per_page")})
        results[name]["no_text"] = sum(1 for t in texts if not t)
    for name in DATATROVE_CONFIGS:
        results[name]["counts"] = last[name]["counts"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--datatrove", action="store_true",
                        help="datatrove's Trafilatura extractor against html_extract (needs .venv-bench)")
    parser.add_argument("--datatrove-timeout", type=float, default=60.0,
                        help="datatrove's per-page extraction timeout in seconds (its default: 1)")
    parser.add_argument("--datatrove-worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(REPO / "configs/pipeline/web.yaml"))
    parser.add_argument("--stage", default=None, help="stage of --config whose ops run (default: all stages)")
    parser.add_argument("--pages", nargs="*", help="page folder names (default: all)")
    parser.add_argument("--split", action="store_true", help="also report two fixed halves of the pages")
    parser.add_argument("--per-page", action="store_true", help="print each page's figures")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.datatrove_worker:
        print(json.dumps(datatrove_worker(args.datatrove_worker, args.datatrove_timeout)))
        return
    if not PAGES.is_dir():
        raise SystemExit(f"{PAGES} is missing: the benchmark needs ../shared/data")
    results = {}
    if args.quality or not (args.speed or args.datatrove):
        results["quality"] = quality(args)
        if not args.per_page:
            per_page = results["quality"].pop("per_page")
            worst = sorted(per_page, key=lambda p: p["kept"] / max(1, p["keep"]))[:8]
            results["quality"]["worst_kept_pages"] = [f"{p['page']} {p['kept']}/{p['keep']}" for p in worst]
    if args.speed:
        results["speed"] = speed(args)
    if args.datatrove:
        results["datatrove"] = datatrove_compare(args)
    text = json.dumps(results, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
