"""Quality rules: every rule on a hand-made document that trips it alone, the rule operators
on real text from ../shared/data (BBC, Reuters, CLUE, Weibo, ChnSentiCorp) with planted junk,
edge cases, the README rule table against the code, and one end-to-end run.

`python tests/test_rules.py` prints the README rule table generated from the code.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from shared_text import (
    bbc_articles,
    chnsenticorp,
    clue_docs,
    docs_table,
    reuters_bodies,
    weibo_posts,
)

from operators import _text as text_module
from operators import registry
from operators.base import WOULD_REJECT, run_operators, split_rejected
from operators.rules import (
    ChineseQuality,
    GopherQuality,
    GopherRepetition,
    LineFilter,
    Rule,
    RuleFilter,
    TextQuality,
)
from operators.web_rules import FineWebQuality

REPO = Path(__file__).resolve().parents[1]
# The cleaning operators in pipeline order; the README table lists them in this order.
CLEANING_OPS = ["html_extract", "fix_encoding", "strip_markup", "normalize", "language_id", "url_filter",
                "traditional_to_simplified", "length_filter", "line_filter", "text_quality", "gopher_quality",
                "chinese_quality", "gopher_repetition", "fineweb_quality", "c4_quality"]
DOCUMENT_RULE_OPS = [GopherQuality, ChineseQuality, GopherRepetition, TextQuality, FineWebQuality]

# Hand-written (not from shared data): a plain English paragraph and a Chinese one.
GOOD_EN = (
    "The river town held its autumn market on Saturday, and farmers from the valley brought apples, "
    "pears and honey to sell. Many families walked down from the hills with their children to see the "
    "stalls. The mayor said that the market has grown every year since it started, and that the town "
    "wants to keep it open for two days next year. Traders told us the weather was kind to them and "
    "that sales were better than they had hoped."
)
GOOD_ZH = (
    "周末的集市在河边的小镇上举行，附近山谷里的农民带来了苹果、梨和蜂蜜。很多家庭带着孩子从山上走下来，"
    "在摊位之间慢慢地逛。镇长说，这个集市自从开办以来每年都在扩大，明年镇上打算让它开放两天。"
    "摊主们告诉我们，今年的天气很好，生意也比他们预想的要好一些。"
)
EDGE_CASES = ["", "好", "，。！？...!!!", "😀👍🏽❤️🇨🇳", "very long line of text " * 20_000,
              "今天我们 learn English together，效果很好！"]


def table(texts, lang=None):
    return docs_table(list(texts), "test", lang)


def only(op_class, rule: Rule, **overrides):
    """The operator with every rule off except `rule` (and the given overrides)."""
    params = {}
    for other in op_class.rules:
        if other.param is None or other.param == rule.param or other.param in overrides:
            continue
        default = op_class.Params.model_fields[other.param].default
        params[other.param] = False if isinstance(default, bool) else None
    return op_class(**params, **overrides)


def reasons(out) -> list[str | None]:
    return out.column("reject_reason").to_pylist() if "reject_reason" in out.column_names else [None] * out.num_rows


# --------------------------------------------------------------------------- every rule, alone

EN_LINES = "\n".join
# (operator, reason) -> (parameter overrides, text, lang)
RULE_CASES = {
    # gopher_quality (English)
    ("gopher_quality", "too_few_words"): ({}, "The cat sat on the mat with the hat.", "en"),
    ("gopher_quality", "too_many_words"): ({"max_words": 20}, GOOD_EN, "en"),
    ("gopher_quality", "mean_word_too_short"): ({}, "to be or not to be so we go " * 10, "en"),
    ("gopher_quality", "mean_word_too_long"): ({}, "the incomprehensibilities characteristically " * 30, "en"),
    ("gopher_quality", "too_many_hashes"): ({}, GOOD_EN + " #news" * 20, "en"),
    ("gopher_quality", "too_many_ellipses"): ({}, GOOD_EN + " and then..." * 20, "en"),
    ("gopher_quality", "too_many_bullet_lines"): (
        {}, EN_LINES(f"- item {i} of the list that goes on with the words" for i in range(12)), "en"),
    ("gopher_quality", "too_many_ellipsis_lines"): (
        {}, EN_LINES(f"and then the story went on for a while with line {i} ..." for i in range(10)), "en"),
    ("gopher_quality", "too_few_alpha_words"): ({}, GOOD_EN + " 12.5 -- 300 4/5 %" * 20, "en"),
    ("gopher_quality", "too_few_stopwords"): (
        {}, "apples pears honey farmers valley market stalls children mayor traders weather " * 6, "en"),
    # chinese_quality
    ("chinese_quality", "too_few_words"): ({}, "今天天气很好。", "zh"),
    ("chinese_quality", "mean_word_too_short"): ({}, "我 你 他 的 了 是 在 和 有 也 " * 5, "zh"),
    ("chinese_quality", "mean_word_too_long"): (
        {}, "中华人民共和国国务院 联合国教科文组织 internationalization " * 6, "zh"),
    ("chinese_quality", "too_few_stopwords"): ({}, "北京 上海 广州 深圳 杭州 南京 武汉 成都 重庆 西安 " * 4, "zh"),
    ("chinese_quality", "low_han_ratio"): ({}, GOOD_EN + " 今天天气很好", "zh"),
    ("chinese_quality", "low_zh_punct_ratio"): ({"min_zh_punct_ratio": 0.02}, GOOD_ZH.replace("，", "")
                                                .replace("。", "").replace("、", ""), "zh"),
    ("chinese_quality", "high_zh_punct_ratio"): ({}, "好！！！真的？？？" * 12, "zh"),
    # gopher_repetition
    ("gopher_repetition", "dup_line_ratio"): ({}, "\n".join([GOOD_EN[:60]] * 3 + [GOOD_EN]), "en"),
    ("gopher_repetition", "dup_para_ratio"): ({}, "\n\n".join(["Thanks!"] * 4 + [GOOD_EN]), "en"),
    ("gopher_repetition", "dup_line_char_ratio"): ({}, "\n".join([GOOD_EN[:200], GOOD_EN[:200], GOOD_EN]), "en"),
    ("gopher_repetition", "dup_para_char_ratio"): ({}, "\n\n".join([GOOD_EN[:200], GOOD_EN[:200], GOOD_EN]), "en"),
    ("gopher_repetition", "top_2gram"): ({}, GOOD_EN + " buy now" * 30, "en"),
    ("gopher_repetition", "top_3gram"): ({}, GOOD_EN + " buy it now" * 25, "en"),
    ("gopher_repetition", "top_4gram"): ({}, GOOD_EN + " buy it right now" * 20, "en"),
    **{("gopher_repetition", f"dup_{n}gram"): ({}, GOOD_EN + " " + GOOD_EN[:40 * n], "en") for n in range(5, 11)},
    # text_quality
    ("text_quality", "too_many_digits"): ({}, "Order 1234567890 shipped 20240101 at 0930 ref 998877", "en"),
    ("text_quality", "too_many_symbols"): ({}, "★☆♥♦ best ★☆♥♦ deal ★☆♥♦", "en"),
    ("text_quality", "char_run"): ({}, "太好笑了" + "哈" * 25, "zh"),
    ("text_quality", "too_many_urls"): ({}, "see https://example.com/a/very/long/path/to/a/page?id=12345", "en"),
    ("text_quality", "lorem_ipsum"): ({}, "Lorem ipsum dolor sit amet, consectetur adipiscing elit.", "en"),
    ("text_quality", "curly_braces"): ({}, "if (x) { return y; }", "en"),
    ("text_quality", "javascript"): ({}, "Please enable JavaScript to view this page.", "en"),
    ("text_quality", "broken_encoding"): ({}, "The price is \ufffd\ufffd5 today.", "en"),
    ("text_quality", "char_repetition"): ({"max_char_repetition_ratio": 0.15}, "buy cheap now! " * 30, "en"),
    ("text_quality", "low_alnum_ratio"): ({"min_alnum_ratio": 0.5}, "-- ** == !! -- ** == !! ok", "en"),
    ("text_quality", "line_too_long"): ({"max_line_length": 100}, GOOD_EN, "en"),
    # fineweb_quality, c4_quality
    ("fineweb_quality", "line_punct_ratio"): (
        {}, EN_LINES(f"this is a line of words number {i} without an end" for i in range(10)), "en"),
    ("fineweb_quality", "short_line_ratio"): ({}, EN_LINES(f"Short line {i}." for i in range(10)), "en"),
    ("fineweb_quality", "char_dup_ratio"): ({}, EN_LINES([GOOD_EN, "A repeated line.", "A repeated line."]), "en"),
    ("fineweb_quality", "list_ratio"): ({}, EN_LINES(f"item {i}." for i in range(20)), "en"),
    ("c4_quality", "too_few_sentences"): ({}, "One sentence only. And a second one.", "en"),
    ("c4_quality", "too_few_paragraphs"): ({"min_paragraphs": 3}, GOOD_EN, "en"),
    # url_filter: the text is the document's URL
    ("url_filter", "blocked_domain"): ({"domains": ["example.com"]}, "https://news.example.com/a", None),
    ("url_filter", "blocked_url_word"): ({"words": ["casino"]}, "https://a.org/best-casino-games", None),
    ("url_filter", "blocked_url_subword"): ({"subwords": ["xxx"]}, "https://a.org/xxxvideos", None),
    # language_id
    ("language_id", "lang_not_kept"): ({}, "El vendedor canceló el envío de mi pedido.", None),
    ("language_id", "low_lang_score"): ({"min_score": 0.99}, "ok ok", None),
    # length_filter
    ("length_filter", "too_short"): ({"min_chars": 10}, "short", None),
    ("length_filter", "too_long"): ({"max_chars": 10}, GOOD_EN, None),
}

LINE_CASES = {
    # repeats the unit before it (the first sentence of GOOD_EN)
    "repeated": ({"repeated": True}, GOOD_EN.split(". ")[0] + "."),
    "javascript": ({}, "Please enable JavaScript in your browser to continue."),
    "long_word": ({}, "x" * 1001 + "."),
    "policy": ({}, "This site uses cookies to improve your experience."),
    "copyright": ({}, "© 2024 Example Ltd, all rights reserved."),
    "share": ({}, "Share on Facebook"),
    "click_here": ({}, "Click here to subscribe to our newsletter."),
    "navigation": ({}, "Home | News | Sport | Weather"),
    "zh_ads": ({}, "加微信abc123了解详情。"),
    "en_spam": ({}, "Work from home and earn $500 a day!"),
    "no_terminal_punct": ({"terminal_punct": True}, "A line without an end"),
    "few_words": ({"min_words": 3}, "Hi there."),
}


def judging_rules() -> list[tuple[str, Rule]]:
    out = []
    for name in CLEANING_OPS:
        for rule in getattr(registry.get(name), "rules", ()):
            if rule.bound in ("min", "max", "flag"):
                out.append((name, rule))
    return out


@pytest.mark.parametrize("name,rule", judging_rules(), ids=lambda v: v if isinstance(v, str) else v.reason)
def test_each_document_rule_alone(name, rule):
    assert (name, rule.reason) in RULE_CASES, f"no test case for {name}/{rule.reason}"
    overrides, text, lang = RULE_CASES[(name, rule.reason)]
    op_class = registry.get(name)
    op = only(op_class, rule, **overrides) if issubclass(op_class, RuleFilter) else op_class(**overrides)
    docs = table([text], lang)
    if name == "url_filter":
        docs = docs.append_column("url", pa.array([text]))
    out = run_operators([op], docs)
    assert reasons(out) == [rule.reason]
    detail = out.column("reject_detail").to_pylist()[0]
    if issubclass(op_class, RuleFilter):
        assert detail.startswith(rule.stat + "=") and rule.param in detail
    if rule.stat.startswith("stat.") and "<" not in rule.stat:
        assert rule.stat in out.column_names


@pytest.mark.parametrize("op_class", DOCUMENT_RULE_OPS)
def test_good_documents_pass_with_defaults(op_class):
    out = run_operators([op_class()], table([GOOD_EN, GOOD_ZH], None))
    assert reasons(out) == [None, None]


def test_more_than_thirty_rules():
    rules = [(name, rule.reason) for name in CLEANING_OPS for rule in getattr(registry.get(name), "rules", ())
             if rule.bound in ("min", "max", "flag", "remove")]
    assert len(rules) >= 30
    assert len(set(rules)) == len(rules)


@pytest.mark.parametrize("rule", [r for r in LineFilter.rules if r.bound == "remove"], ids=lambda r: r.reason)
@pytest.mark.parametrize("split", ["lines", "sentences"])
def test_each_line_rule_removes_only_its_unit(rule, split):
    overrides, junk = LINE_CASES[rule.reason]
    op = LineFilter(split=split, **overrides)
    good = [GOOD_EN.split(". ")[0] + ".", GOOD_ZH.split("。")[0] + "。"]
    text = f"{good[0]}\n{junk}\n{good[1]}"
    out = run_operators([op], table([text]))
    unit = split
    assert out.column("text").to_pylist() == [f"{good[0]}\n{good[1]}"]
    assert out.column(f"stat.{unit}_removed_{rule.reason}").to_pylist() == [1]
    assert out.column(f"stat.{unit}_removed").to_pylist() == [1]
    assert out.column(f"stat.{unit}_chars_removed").to_pylist() == [len(junk)]


def test_line_filter_emptied_document_is_rejected_with_counts():
    text = "Share on Facebook\nHome | News | Sport | Weather\n© 2024 Example Ltd. All rights reserved."
    out = run_operators([LineFilter(split="lines")], table([text, GOOD_EN]))
    kept, rejected = split_rejected(out)
    assert rejected.column("reject_reason").to_pylist() == ["all_lines_removed"]
    assert rejected.column("reject_detail").to_pylist() == ["share=1 navigation=1 copyright=1"]
    assert rejected.column("text").to_pylist() == [text]  # the original stays inspectable
    assert kept.column("text").to_pylist() == [GOOD_EN]


def test_line_filter_analyze_only_counts():
    text = f"{GOOD_EN}\nClick here to subscribe."
    out = run_operators([LineFilter()], table([text, "Share on Facebook"]), analyze=True)
    assert out.column("text").to_pylist() == [text, "Share on Facebook"]
    assert out.column("stat.sentences_removed_click_here").to_pylist() == [1, 0]
    assert out.column(WOULD_REJECT).to_pylist() == [None, "line_filter/all_sentences_removed"]


def test_line_filter_keeps_long_paragraphs_that_mention_a_phrase():
    paragraph = ("The company said its new privacy policy, which it published on Monday after months of "
                 "talks with regulators in several countries, would let users delete their data "
                 "and see which partners had received it, a change critics called overdue")
    out = run_operators([LineFilter()], table([paragraph]))
    assert out.column("text").to_pylist() == [paragraph]


# --------------------------------------------------------------------------- real text


def test_bbc_news_is_kept(shared_data):
    texts = bbc_articles(shared_data, 300)
    ops = [LineFilter(), GopherQuality(), GopherRepetition(), TextQuality()]
    kept, rejected = split_rejected(run_operators(ops, table(texts, "en")))
    assert kept.num_rows >= 0.95 * len(texts), Counter(reasons(rejected))


@pytest.mark.parametrize("pattern", [r"[\p{L}]", r"\s", r"[\p{Han}]", r"[\p{Latin}]", r"[\p{P}\p{S}]"])
def test_code_point_counts_equal_re2_counts(shared_data, pattern):
    # Empty texts between others (a count of one is not the next text's first character),
    # astral characters (emoji, rare Han) and the last text empty.
    texts = [*clue_docs(shared_data, 30), "", "😀 𠀀𠀁 ab", "", *bbc_articles(shared_data, 5), "", "x", ""]
    expected = text_module.count_regex(pa.array(texts), pattern)
    assert text_module.CodePoints(texts).count(pattern).tolist() == expected.tolist()
    assert text_module.CodePoints([]).count(pattern).tolist() == []


def test_longest_runs_of_letters_and_digits(shared_data):
    import itertools

    texts = [*clue_docs(shared_data, 20), *bbc_articles(shared_data, 5), "", "aaab", "----aa", "好好好好", "",
             "x", "_____", "𠀀𠀀𠀀a", "ab" + "9" * 30, "aa", "aa", "!!", "Ａａａ", ""]
    expected = [max((len(list(group)) for char, group in itertools.groupby(t) if char.isalnum()), default=0)
                for t in texts]
    assert text_module.longest_alnum_runs(text_module.CodePoints(texts)).tolist() == expected


def test_chinese_text_mostly_kept(shared_data):
    texts = clue_docs(shared_data, 300) + chnsenticorp(shared_data, 300)
    ops = [LineFilter(), ChineseQuality(), GopherRepetition(), TextQuality()]
    kept, rejected = split_rejected(run_operators(ops, table(texts, "zh")))
    assert kept.num_rows >= 0.85 * len(texts), Counter(reasons(rejected))


def test_planted_junk_in_real_text(shared_data):
    bbc = bbc_articles(shared_data, 20)
    weibo = [p for p in weibo_posts(shared_data, 200) if len(p) > 40][:10]
    paragraphs = bbc[0].split("\n\n")
    docs = {
        "repeated_paragraphs": ("en", "\n\n".join(paragraphs[:3] * 4)),
        "boilerplate": ("en", "Home | News | Sport | Weather\n" + bbc[1]
                        + "\nShare on Facebook\nThis site uses cookies to improve your experience."
                        + "\n© 2024 BBC. All rights reserved."),
        "ad_sentence": ("zh", weibo[0] + "加微信abc12345领取优惠券。"),
        "lorem": ("en", bbc[2] + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."),
        "spam_run": ("zh", weibo[1] + "哈" * 40),
        "keyword_list": ("en", " ".join(w for w in bbc[3].split() if w.lower() not in GopherQuality.Params()
                                        .stopwords)),
    }
    ids = list(docs)
    t = pa.table({"id": [f"planted:{i}" for i in range(len(ids))], "text": [text for _, text in docs.values()],
                  "source": ["planted"] * len(ids), "lang": [lang for lang, _ in docs.values()]})
    ops = [LineFilter(), TextQuality(), GopherQuality(), ChineseQuality(), GopherRepetition()]
    out = run_operators(ops, t)
    by_id = {row["id"]: row for row in out.to_pylist()}
    get = {name: by_id[f"planted:{i}"] for i, name in enumerate(ids)}
    # repeated paragraphs are repeated lines too; the line rule comes first
    assert get["repeated_paragraphs"]["reject_reason"] == "dup_line_ratio"
    assert get["lorem"]["reject_reason"] == "lorem_ipsum"
    assert get["spam_run"]["reject_reason"] == "char_run"
    assert get["keyword_list"]["reject_reason"] == "too_few_stopwords"
    boiler = get["boilerplate"]
    assert boiler["reject_reason"] is None
    assert boiler["text"] == bbc[1].strip()
    assert boiler["stat.sentences_removed"] == 5  # "© 2024 BBC." and "All rights reserved." are two
    ad = get["ad_sentence"]
    assert ad["reject_reason"] is None and ad["text"] == weibo[0] and ad["stat.sentences_removed_zh_ads"] == 1


def test_reuters_tables_fail_gopher(shared_data):
    bodies = reuters_bodies(shared_data, 400)
    out = run_operators([GopherQuality()], table(bodies, "en"))
    rows = out.select(["text", "reject_reason"]).to_pylist()
    tables = [r for r in rows if r["text"].startswith("Shr ")]
    prose = [r for r in rows if not r["text"].startswith("Shr ")]
    table_rejected = sum(r["reject_reason"] is not None for r in tables) / len(tables)
    prose_rejected = sum(r["reject_reason"] is not None for r in prose) / len(prose)
    # Earnings tables (Shr 34 cts vs 1.19 dlrs ...) are mostly rejected, prose mostly kept.
    assert table_rejected >= 0.6 and prose_rejected <= 0.3
    assert {"too_few_words", "too_few_alpha_words"} <= {r["reject_reason"] for r in tables}


def test_chnsenticorp_site_footer_removed_review_kept(shared_data):
    reviews = [r for r in chnsenticorp(shared_data, 3000) if "all rights reserved" in r][:5]
    assert reviews
    out = run_operators([LineFilter()], table(reviews, "zh"))
    kept, rejected = split_rejected(out)
    # A review whose last sentence runs into the footer goes with it; that empties it.
    assert set(rejected.column("reject_reason").to_pylist()) <= {"all_sentences_removed"}
    assert kept.num_rows >= 3
    for after in kept.column("text").to_pylist():
        assert "rights reserved" not in after.lower() and "网站导航" not in after
        assert any(r.startswith(after) for r in reviews)


def test_jieba_segments_each_document_once(shared_data, monkeypatch):
    calls = Counter()
    real = text_module.segmenter("rjieba")

    def counting(text):
        calls[text] += 1
        return real(text)

    monkeypatch.setattr(text_module, "segmenter", lambda name: counting)
    text_module.CACHE.clear()
    texts = clue_docs(shared_data, 100)
    run_operators([ChineseQuality(), GopherRepetition()], table(texts, "zh"))
    assert len(calls) == len(set(texts)) and max(calls.values()) == 1
    text_module.CACHE.clear()


def test_jieba_and_rjieba_agree_on_counts(shared_data):
    texts = clue_docs(shared_data, 50)
    a = run_operators([ChineseQuality(segmenter="rjieba")], table(texts, "zh"))
    b = run_operators([ChineseQuality(segmenter="jieba")], table(texts, "zh"))
    words_a = np.array(a.column("stat.words").to_pylist(), float)
    words_b = np.array(b.column("stat.words").to_pylist(), float)
    assert np.median(np.abs(words_a - words_b) / np.maximum(words_b, 1)) < 0.1


def test_language_scoping_and_shared_stats():
    """gopher_quality judges English only, chinese_quality Chinese only; both write
    stat.words, each for its own documents."""
    t = table([GOOD_EN, GOOD_ZH])
    out = run_operators([GopherQuality(), ChineseQuality()], t)
    words = out.column("stat.words").to_pylist()
    assert words[0] > 60 and 40 < words[1] < 120
    out = run_operators([GopherQuality(langs=["zh"], min_mean_word_length=3)], t)
    assert reasons(out) == [None, "mean_word_too_short"]
    assert out.column("stat.words").to_pylist()[0] is None


@pytest.mark.parametrize("name", ["gopher_quality", "chinese_quality", "gopher_repetition", "text_quality",
                                  "line_filter", "length_filter", "fineweb_quality", "c4_quality", "html_extract"])
def test_edge_cases_never_error(name):
    op = registry.create(name)
    out = run_operators([op], table(EDGE_CASES))
    assert out.num_rows == len(EDGE_CASES)
    assert "error" not in reasons(out)


def test_edge_case_reasons():
    out = run_operators([GopherQuality(), ChineseQuality(), TextQuality()], table(EDGE_CASES))
    # Rejected rows move behind the active ones: read each document's reason by its id.
    by_id = dict(zip(out.column("id").to_pylist(), reasons(out)))
    got = [by_id[f"test:{i}"] for i in range(len(EDGE_CASES))]
    assert got[0] == "too_few_words"           # empty: guessed en, no words
    assert got[1] == "too_few_words"           # one Han character
    assert got[2] == "too_few_words"           # only punctuation
    assert got[3] == "too_few_words"           # only emoji: no words
    assert got[4] == "too_few_stopwords"       # a long line of the same words
    assert got[5] == "too_few_words"           # short mixed Chinese and English (lid.176: zh)


# --------------------------------------------------------------------------- README table


def render_default(value) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        if len(value) > 8:
            return f"[{len(value)} words]"
        return "[" + ", ".join(render_default(v).strip('"') for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value)
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rule_table() -> str:
    """The README "Cleaning rules" table, generated from the operators' rules and params."""
    rows = ["| operator | level | reason | parameter = default | statistic | rejects, removes or does |",
            "|---|---|---|---|---|---|"]
    for name in CLEANING_OPS:
        cls = registry.get(name)
        fields = cls.Params.model_fields
        used = set()
        for rule in cls.rules:
            if rule.param is not None:
                used.add(rule.param)
                param = f"`{rule.param}` = `{render_default(fields[rule.param].get_default(call_default_factory=True))}`"
            else:
                param = "—"
            level = {"remove": "sentence/line", "measure": "statistic"}.get(rule.bound, rule.level)
            reason = f"`{rule.reason}`" if rule.reason else "—"
            rows.append(f"| `{name}` | {level} | {reason} | {param} | `{rule.stat}` | {_cell(rule.doc)} |")
        for field, info in fields.items():
            if field in used:
                continue
            assert info.description, f"{name}.{field} needs a description for the README table"
            rows.append(f"| `{name}` | option | — | `{field}` = `{render_default(info.get_default(call_default_factory=True))}` | — | "
                        f"{_cell(info.description)} |")
    return "\n".join(rows)


def readme_table() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Cleaning rules")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else None]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_readme_rule_table_matches_the_code():
    expected = rule_table()
    assert readme_table() == expected, "README table is stale; regenerate with: python tests/test_rules.py"
    for name in CLEANING_OPS:
        for field in registry.get(name).Params.model_fields:
            assert f"| `{name}` |" in expected and f"`{field}` =" in expected


# --------------------------------------------------------------------------- end to end


CLEAN_STAGE = [
    {"fix_encoding": {}},
    {"strip_markup": {}},
    {"normalize": {}},
    {"language_id": {}},
    {"traditional_to_simplified": {}},
    {"length_filter": {"min_chars": 5}},
    {"line_filter": {}},
    {"text_quality": {}},
    {"gopher_quality": {}},
    {"chinese_quality": {}},
    {"gopher_repetition": {}},
]


@pytest.mark.ray
@pytest.mark.slow
def test_clean_stage_end_to_end(shared_data, run_config, tmp_path, engine):
    records = [{"id": f"bbc{i}", "text": t} for i, t in enumerate(bbc_articles(shared_data, 100))]
    records += [{"id": f"clue{i}", "text": t} for i, t in enumerate(clue_docs(shared_data, 100))]
    records += [{"id": f"weibo{i}", "text": t} for i, t in enumerate(weibo_posts(shared_data, 100))]
    planted = {
        "spanish": ("Hola, quiero saber dónde está mi pedido, el vendedor no contesta y ya pasaron "
                    "tres semanas desde que pagué.", "language_id", "lang_not_kept"),
        "markup": ("<div><br/><span></span></div>", "strip_markup", "markup_only"),
        "lorem": (GOOD_EN + " Lorem ipsum dolor sit amet.", "text_quality", "lorem_ipsum"),
        "boiler": ("Share on Facebook\nClick here to subscribe.", "line_filter", "all_sentences_removed"),
        "dups": ("\n\n".join([GOOD_EN] * 4), "gopher_repetition", "dup_line_ratio"),
    }
    records += [{"id": key, "text": text} for key, (text, _, _) in planted.items()]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    config = {"run": {"name": "clean-e2e"}, "ray": {"num_cpus": 2, "batch_size": 128},
              "inputs": [{"path": str(path), "source": "mix", "id_field": "id"}],
              "stages": [{"name": "clean", "ops": CLEAN_STAGE}]}
    stats, run_dir = run_config(config, engine=engine)
    stage = stats["stages"][0] if "stages" in stats else stats
    assert stage["docs_in"] == len(records)
    assert stage["docs_in"] == stage["docs_out"] + stage["rejected_total"]
    rejected_files = list(run_dir.glob("01-clean/rejected/*.parquet"))
    rejected = {r["id"]: r for f in rejected_files for r in pq.read_table(f).to_pylist()}
    for key, (_, op, reason) in planted.items():
        row = rejected[f"mix:{key}"]
        assert (row["reject_op"], row["reject_reason"]) == (op, reason)
    kept_ids = {r["id"] for f in run_dir.glob("01-clean/data/*.parquet") for r in pq.read_table(f).to_pylist()}
    assert sum(i.startswith("mix:bbc") for i in kept_ids) >= 95


if __name__ == "__main__":
    print(rule_table())


def test_url_filter_reads_block_list_files_and_says_which_is_missing(tmp_path):
    from operators.web_rules import BlockListMissing, UrlFilter

    (tmp_path / "domains.txt").write_text("# blocked\nbad.example\n")
    op = UrlFilter(domain_files=[str(tmp_path / "domains.txt")])
    docs = table(["a", "b", "c"]).append_column(
        "url", pa.array(["http://www.bad.example/x", "http://notbad.example/", None]))
    assert reasons(run_operators([op], docs)) == ["blocked_domain", None, None]
    with pytest.raises(BlockListMissing, match=r"nope\.txt does not exist"):
        UrlFilter(word_files=[str(tmp_path / "nope.txt")])


def test_c4_and_fineweb_rules_count_chinese_sentences_and_line_ends():
    from operators.web_rules import C4Quality

    text = GOOD_ZH + "\n" + GOOD_ZH[:40] + "。"
    out = run_operators([C4Quality(), FineWebQuality()], table([text], "zh"))
    assert out.column("stat.sentences").to_pylist() == [text.count("。")]
    assert out.column("stat.line_punct_ratio").to_pylist() == [1.0]
    assert reasons(out) == [None]


def test_unlabelled_german_is_not_judged_by_english_rules():
    german = ("Der Markt in der kleinen Stadt am Fluss fand am Samstag statt, und die Bauern aus dem Tal "
              "brachten Äpfel, Birnen und Honig mit. Viele Familien kamen mit ihren Kindern aus den Bergen "
              "herunter, um die Stände zu sehen. Der Bürgermeister sagte, dass der Markt jedes Jahr größer "
              "werde und im nächsten Jahr zwei Tage dauern solle.")
    out = run_operators([GopherQuality()], table([german, GOOD_EN]))
    assert reasons(out) == [None, None]
    assert out.column("stat.stopwords").to_pylist()[0] is None  # not measured: lid.176 says de
    out = run_operators([GopherQuality()], table([german], "en"))  # declared English: judged
    assert reasons(out) == ["too_few_stopwords"]
