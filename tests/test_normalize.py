"""Normalization mappers: normalize, fix_encoding, strip_markup, traditional_to_simplified.

Real text from ../shared/data (Reuters SGML, UDHR in several encodings, Sinica treebank
traditional Chinese, CLUE, BBC) plus hand-made edge cases."""

from __future__ import annotations

import pyarrow as pa
import pytest
from shared_text import (
    bbc_articles,
    clue_docs,
    docs_table,
    reuters_sgml,
    sinica_sentences,
    udhr,
)

from operators.base import WOULD_REJECT, run_operators, split_rejected
from operators.normalize import (
    FixEncoding,
    Normalize,
    StripMarkup,
    TraditionalToSimplified,
)

EDGE_CASES = {
    "empty": "",
    "one_char": "好",
    "punctuation": "，。！？...!!!",
    "emoji": "😀👍🏽❤️🇨🇳",
    "long_line": "很长的一行 a very long line " * 20_000,
    "mixed": "今天我们 learn English together，效果很好！",
}
REUTERS_SGML_ELEMENTS = ["date", "topics", "places", "people", "orgs", "exchanges", "companies", "unknown"]


def table(texts, lang=None):
    return docs_table(list(texts), "test", lang)


def texts_of(t: pa.Table) -> list[str]:
    return t.column("text").to_pylist()


# --------------------------------------------------------------------------- normalize


def test_normalize_folds_fullwidth_keeps_chinese_punctuation():
    out = run_operators([Normalize()], table(["ＡＢＣ１２３，你好！（测试）\u3000end"]))
    assert texts_of(out) == ["ABC123，你好！（测试） end"]


def test_normalize_fullwidth_alnum_without_nfkc():
    out = run_operators([Normalize(form="NFC")], table(["ＡＢＣ１２３，ｘ"]))
    assert texts_of(out) == ["ABC123，x"]
    kept = run_operators([Normalize(form="NFC", fullwidth_alnum=False)], table(["ＡＢＣ"]))
    assert texts_of(kept) == ["ＡＢＣ"]


def test_normalize_removes_control_invisible_private_use():
    text = "a\x00b\u200bc\ufeffd\ue000e\r\nf   g\n\n\n\nh"
    out = run_operators([Normalize()], table([text]))
    assert texts_of(out) == ["abcde\nf g\n\nh"]
    assert out.column("stat.chars_removed").to_pylist() == [len(text) - len("abcde\nf g\n\nh")]


def test_normalize_emoji_and_symbols_are_optional():
    text = "好开心😀👍🏽 ★ 30°C ← ok"
    assert texts_of(run_operators([Normalize()], table([text]))) == [text]
    no_emoji = run_operators([Normalize(remove_emoji=True)], table([text]))
    assert texts_of(no_emoji) == ["好开心 ★ 30°C ← ok"]
    no_symbols = run_operators([Normalize(remove_emoji=True, remove_symbols=True)], table([text]))
    assert texts_of(no_symbols) == ["好开心 30°C ok"]


def test_normalize_edge_cases():
    out = run_operators([Normalize(remove_emoji=True)], table(EDGE_CASES.values()))
    kept, rejected = split_rejected(out)
    assert sorted(rejected.column("id").to_pylist()) == ["test:0", "test:3"]  # empty, only emoji
    assert set(rejected.column("reject_reason").to_pylist()) == {"empty"}
    assert texts_of(kept)[0] == "好"
    assert texts_of(kept)[-1] == EDGE_CASES["mixed"]


def test_normalize_real_text_is_stable(shared_data):
    """Normalizing twice changes nothing the second time; BBC English is left as is."""
    texts = clue_docs(shared_data, 200) + bbc_articles(shared_data, 50)
    once = run_operators([Normalize()], table(texts))
    twice = run_operators([Normalize()], once.select(["id", "text", "source", "lang"]))
    assert texts_of(once) == texts_of(twice)
    assert sum(once.column("stat.chars_removed").to_pylist()) > 0  # CLUE has odd spaces


# --------------------------------------------------------------------------- fix_encoding


def test_fix_encoding_repairs_mojibake_of_real_text(shared_data):
    chinese = [line for line in udhr(shared_data, "zh").splitlines() if len(line) > 10][:20]
    french = [line for line in udhr(shared_data, "fr").splitlines() if "é" in line][:20]
    originals = chinese + french
    # UTF-8 bytes read as Latin-1 (every byte kept, as C1 controls) and as cp1252.
    broken = ([t.encode("utf-8").decode("latin-1") for t in chinese]
              + [t.encode("utf-8").decode("cp1252") for t in french])
    assert all(b != o for b, o in zip(broken, originals))
    out = run_operators([FixEncoding()], table(broken))
    repaired = texts_of(out)
    assert sum(r == o for r, o in zip(repaired, originals)) >= 0.9 * len(originals)
    assert sum(out.column("stat.encoding_fixed").to_pylist()) >= 0.9 * len(originals)


def test_fix_encoding_leaves_clean_text_alone(shared_data):
    texts = [*clue_docs(shared_data, 100), udhr(shared_data, "fr")[:2000], udhr(shared_data, "de")[:2000]]
    texts += list(EDGE_CASES.values())
    out = run_operators([FixEncoding()], table(texts))
    assert texts_of(out) == texts
    assert set(out.column("stat.encoding_fixed").to_pylist()) == {0}


# --------------------------------------------------------------------------- strip_markup


def test_strip_markup_reuters_sgml(shared_data):
    articles = reuters_sgml(shared_data, 200)
    op = StripMarkup(drop_elements=["script", "style", *REUTERS_SGML_ELEMENTS])
    out = run_operators([op], table(articles))
    kept, rejected = split_rejected(out)
    cleaned = texts_of(kept)
    # Articles without a body still have a title; none is only markup.
    assert rejected.num_rows == 0
    for text in cleaned:
        assert "<REUTERS" not in text and "<BODY>" not in text and "</TITLE>" not in text
        assert "&#3;" not in text and "&lt;" not in text and "\x03" not in text
        assert "</D>" not in text and "NEWID" not in text
    first = cleaned[0]
    assert first.startswith("BAHIA COCOA REVIEW")
    assert "Showers continued throughout the week" in first
    # Ticker symbols are escaped text in the SGML (&lt;SRD>): they stay as text.
    assert any("<SRD>" in t for t in cleaned)
    removed = out.column("stat.markup_chars_removed").to_pylist()
    assert all(r > 0 for r in removed)


def test_strip_markup_html():
    html_doc = ("<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style></head>"
                "<body><!-- nav --><p>Fish &amp; chips&nbsp;cost &pound;5.</p><script>var x = 1;</script>"
                "<ul><li>one</li><li>two</li></ul><div>中文&#12290;</div></body></html>")
    out = run_operators([StripMarkup()], table([html_doc]))
    assert texts_of(out) == ["Fish & chips\xa0cost £5.\n\none\n\ntwo\n\n中文。"]


def test_strip_markup_leaves_prose_and_plain_text():
    texts = ["if x < y and y > z then x < z", "a<=b", "price < 5 and > 2", "普通文本，没有标记。"]
    out = run_operators([StripMarkup()], table(texts))
    assert texts_of(out) == texts
    assert set(out.column("stat.markup_chars_removed").to_pylist()) == {0}


def test_strip_markup_only_markup_is_rejected_and_analyze_only_measures():
    texts = ["<div><br/></div>", "<p>kept</p>"]
    kept, rejected = split_rejected(run_operators([StripMarkup()], table(texts)))
    assert rejected.column("reject_reason").to_pylist() == ["markup_only"]
    assert texts_of(kept) == ["kept"]
    analyzed = run_operators([StripMarkup()], table(texts), analyze=True)
    assert texts_of(analyzed) == texts
    assert analyzed.column(WOULD_REJECT).to_pylist() == ["strip_markup/markup_only", None]


def test_strip_markup_edge_cases():
    out = run_operators([StripMarkup()], table(EDGE_CASES.values()))
    assert texts_of(out) == list(EDGE_CASES.values())


# --------------------------------------------------------------------------- traditional_to_simplified


def test_t2s_converts_sinica_traditional(shared_data):
    sentences = sinica_sentences(shared_data, 300)
    out = run_operators([TraditionalToSimplified()], table(sentences))
    converted = texts_of(out)
    changed = out.column("stat.t2s_chars_changed").to_pylist()
    assert sum(c > 0 for c in changed) >= 0.8 * len(sentences)
    assert converted[1] == "我们是邻居，"
    joined = "".join(converted)
    for traditional in "們個這來時說為與從學":
        assert traditional not in joined


def test_t2s_leaves_simplified_and_japanese(shared_data):
    texts = clue_docs(shared_data, 300)
    out = run_operators([TraditionalToSimplified()], table(texts))
    changed = out.column("stat.t2s_chars_changed").to_pylist()
    assert sum(c > 0 for c in changed) <= 5  # CLUE holds a few stray traditional characters
    japanese = udhr(shared_data, "ja")[:500]
    ja = run_operators([TraditionalToSimplified()], table([japanese], lang="ja"))
    assert texts_of(ja) == [japanese]
    unknown = run_operators([TraditionalToSimplified()], table(["這是測試"]))
    assert texts_of(unknown) == ["这是测试"]


def test_t2s_taiwan_phrases():
    out = run_operators([TraditionalToSimplified(config="tw2sp")], table(["電腦軟體的滑鼠"]))
    assert texts_of(out) == ["电脑软件的鼠标"]


def test_t2s_edge_cases():
    out = run_operators([TraditionalToSimplified()], table(EDGE_CASES.values()))
    assert texts_of(out) == list(EDGE_CASES.values())


@pytest.mark.parametrize("op", [Normalize(), FixEncoding(), StripMarkup(), TraditionalToSimplified()])
def test_every_normalizer_keeps_row_count_on_edge_cases(op):
    t = table(EDGE_CASES.values())
    out = run_operators([op], t)
    assert out.num_rows == t.num_rows
    _, rejected = split_rejected(out)
    assert "error" not in rejected.column("reject_reason").to_pylist() if rejected.num_rows else True
