"""sensitive_filter and ziya_rates: lexicon formats, matching rules, rates and thresholds on
hand-made lexicons and edge cases, the user's real lexicon folders (../shared/data/wordlists)
and real Chinese and English text."""

from __future__ import annotations

import glob
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from common.errors import ConfigError
from operators.base import run_operators, split_rejected
from operators.sensitive import (
    SENSITIVE_DIR,
    ZIYA_DIR,
    LexiconMatcher,
    LexiconSource,
    Rule,
    SensitiveFilter,
    ZiyaRates,
    category_name,
    read_lexicon,
)
from pipeline.config import parse_config

REPO = Path(__file__).resolve().parents[1]
RATE_COLUMNS = ["stat.rate_privacy", "stat.rate_toxic", "stat.rate_ad", "stat.rate_html"]


def lexicon(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "lex"
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_text(content, encoding="utf-8")
    return folder


def table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(len(texts))], "text": texts})


def matcher(terms: dict[str, list[str]], **kwargs) -> LexiconMatcher:
    return LexiconMatcher({c: [Rule(tuple(t.split("+"))) for t in ts] for c, ts in terms.items()}, **kwargs)


def hits(m: LexiconMatcher, text: str) -> dict[str, int]:
    result = m.scan(text)
    return dict(zip(m.categories, result.hits if result else [0] * len(m.categories)))


# --------------------------------------------------------------------------- matching


def test_latin_terms_match_whole_words_only_and_chinese_anywhere():
    m = matcher({"t": ["ass", "sex", "法轮功", "fa轮", "2 girls 1 cup"]})
    assert hits(m, "a first-class classic from Essex, Sussex") == {"t": 0}
    assert hits(m, "Ass! you ass, ASS.") == {"t": 3}
    assert hits(m, "他说法轮功是邪教") == {"t": 1}
    assert hits(m, "我是ass吗") == {"t": 1}  # Chinese around a Latin word is a boundary
    assert hits(m, "fa轮大法 and sofa轮") == {"t": 1}  # only the Latin edge needs a boundary
    assert hits(m, "2 girls 1 cup; 22 girls 1 cups") == {"t": 1}


def test_overlapping_terms_count_once_per_category():
    m = matcher({"a": ["法轮", "法轮功", "轮功"], "b": ["轮功"]})
    assert hits(m, "法轮功") == {"a": 1, "b": 1}
    assert hits(m, "法轮功，法轮功") == {"a": 2, "b": 2}


def test_co_occurrence_rules_count_as_often_as_their_rarest_part():
    m = matcher({"guns": ["出售+钢珠枪"]})
    assert hits(m, "出售二手自行车") == {"guns": 0}
    assert hits(m, "出售钢珠枪，出售，出售，钢珠枪") == {"guns": 2}
    assert m.scan("出售钢珠枪", keep_terms=3).terms == [["出售+钢珠枪"]]


def test_exceptions_suppress_terms_inside_them():
    m = LexiconMatcher({"porn": [Rule(("口交",)), Rule(("口交通",), exception=True)]})
    assert hits(m, "门口交通很方便") == {"porn": 0}
    assert hits(m, "门口交通很方便，口交") == {"porn": 1}


def test_short_terms_are_skipped_and_counted():
    m = matcher({"t": ["操", "xx", "操你"]}, min_term_chars=2)
    assert m.skipped_short == 1 and hits(m, "操作系统 操你") == {"t": 1}


def test_empty_lexicon_and_empty_text():
    assert matcher({"t": []}).scan("anything") is None
    assert matcher({"t": ["word"]}).scan("") is None
    assert matcher({"t": ["word"]}).scan("no match here") is None


# --------------------------------------------------------------------------- lexicon files


def test_lexicon_file_format(tmp_path):
    folder = lexicon(tmp_path, {
        "Porn Words.txt": "\ufeff# comment\n\n  Sex Video  \n色情\n!色情小说\r\n",
        "guns.txt": "出售|钢珠枪\n气枪,子弹\n",
        "README.md": "not a lexicon", "LICENSE": "MIT", "SOURCE.txt": "from somewhere",
    })
    rules = read_lexicon(LexiconSource(path=str(folder), separators=",|"))
    assert sorted(rules) == ["guns", "porn_words"]
    assert rules["porn_words"] == [Rule(("sex video",)), Rule(("色情",)), Rule(("色情小说",), exception=True)]
    assert rules["guns"] == [Rule(("出售", "钢珠枪")), Rule(("气枪", "子弹"))]
    anyway = read_lexicon(LexiconSource(path=str(folder), separators=",|", multi_term="any"))
    assert anyway["guns"] == [Rule(("出售",)), Rule(("钢珠枪",)), Rule(("气枪",)), Rule(("子弹",))]
    whole = read_lexicon(LexiconSource(path=str(folder / "guns.txt")))
    assert whole == {"guns": [Rule(("出售|钢珠枪",)), Rule(("气枪,子弹",))]}


def test_category_names_are_column_safe():
    assert category_name("零时-Tencent") == "零时_tencent"
    assert category_name("COVID-19词库") == "covid_19词库"
    assert category_name(" Ads & Spam ") == "ads_spam"
    with pytest.raises(ValueError):
        category_name("---")


def test_encodings(tmp_path):
    folder = tmp_path / "gbk"
    folder.mkdir()
    (folder / "ads.txt").write_bytes("加微信\n优惠券\n".encode("gb18030"))
    with pytest.raises(ValueError, match="not utf-8 text"):
        read_lexicon(LexiconSource(path=str(folder)))
    assert read_lexicon(LexiconSource(path=str(folder), encoding="gb18030")) == {
        "ads": [Rule(("加微信",)), Rule(("优惠券",))]}


def _config(ops: list) -> dict:
    return {"inputs": [{"path": str(REPO / "pyproject.toml"), "format": "txt"}],
            "stages": [{"name": "s", "ops": ops}]}


def test_config_errors_name_the_yaml_path(tmp_path):
    folder = lexicon(tmp_path, {"porn.txt": "色情\n", "bad.txt": "\xff".encode("latin-1").decode("latin-1")})
    (folder / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    cases = [
        ({"sensitive_filter": {"lexicons": [{"path": str(tmp_path / "nope")}]}},
         r"stages\[0\]\.ops\[0\]\.sensitive_filter\.lexicons\[0\]\.path: lexicon .*nope does not exist"),
        ({"sensitive_filter": {"lexicons": [{"path": str(folder)}]}}, r"sensitive_filter: .*bad.txt is not utf-8"),
        ({"sensitive_filter": {"lexicons": [{"path": str(folder), "files": ["porn.txt"]}],
                               "thresholds": {"pron": 1}}}, r"thresholds\.pron: no such category; known: porn"),
        ({"sensitive_filter": {"categories": ["weapons"]}}, r"categories: weapons not in the lexicons"),
        ({"sensitive_filter": {"lexicons": [{"path": str(folder), "files": ["*.csv"]}]}}, r"no lexicon files in"),
        ({"sensitive_filter": {"lexicons": [{"path": str(folder), "encoding": "klingon"}]}}, r"unknown encoding"),
        ({"ziya_rates": {"thresholds": {"spam": 1}}}, r"ziya_rates\.thresholds\.spam"),
        ({"ziya_rates": {"toxic": []}}, r"toxic: name at least one lexicon"),
        ({"sensitive_filter": {"min_hits": 0}}, r"sensitive_filter\.min_hits"),
    ]
    for op, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_config(_config([op]))


def test_relative_lexicon_paths_become_absolute(tmp_path, monkeypatch):
    lexicon(tmp_path, {"ads.txt": "加微信\n"})
    monkeypatch.chdir(tmp_path)
    op = parse_config(_config([{"sensitive_filter": {"lexicons": [{"path": "lex"}]}}])).stages[0].ops[0]
    assert op.params["lexicons"][0]["path"] == str(tmp_path / "lex")


# --------------------------------------------------------------------------- sensitive_filter


def test_rates_thresholds_reasons_and_details(tmp_path):
    folder = lexicon(tmp_path, {"gambling.txt": "网赌\nonline casino\n", "ads.txt": "加微信\n"})
    op = SensitiveFilter(lexicons=[{"path": str(folder)}], thresholds={"gambling": 5.0}, min_hits=2)
    texts = [
        "网赌" + "。" * 98,                      # 1 hit in 100 chars = 10/1000 but below min_hits
        "网赌网赌" + "。" * 96,                   # 2 hits in 100 chars = 20/1000: rejected
        "Online Casino, online casino! " + "x" * 370,  # 2 hits in 400 chars = 5/1000: not above 5
        "加微信" * 10,                            # ads has no threshold: measured only
    ]
    out = run_operators([op], table(texts))
    assert out.column("stat.sensitive_gambling").to_pylist() == [10.0, 20.0, 5.0, 0.0]
    assert out.column("stat.sensitive_ads").to_pylist() == [0.0, 0.0, 0.0, 1000 * 10 / 30]
    _, rejected = split_rejected(out)
    assert rejected.column("id").to_pylist() == ["1"]
    assert rejected.column("reject_reason").to_pylist() == ["sensitive:gambling"]
    assert rejected.column("reject_op").to_pylist() == ["sensitive_filter"]
    assert rejected.column("reject_detail").to_pylist() == ["gambling: 2 hits, 20.00 per 1000 chars > 5; 网赌"]


def test_worst_category_is_the_reason_and_default_threshold(tmp_path):
    folder = lexicon(tmp_path, {"a.txt": "alpha\n", "b.txt": "beta\n"})
    op = SensitiveFilter(lexicons=[{"path": str(folder)}], thresholds={"a": 1.0}, default_threshold=10.0)
    text = " ".join(["alpha"] * 2 + ["beta"] * 30) + " " + "z" * 800  # ~1000 chars
    out = run_operators([op], table([text, "alpha " + "z" * 3000]))
    _, rejected = split_rejected(out)
    # a: ~2/1000 is 2x its threshold; b: ~30/1000 is 3x its threshold.
    assert rejected.column("reject_reason").to_pylist() == ["sensitive:b"]


def test_decide_from_statistics_matches_apply(tmp_path):
    folder = lexicon(tmp_path, {"a.txt": "alpha\n色情\n"})
    op = SensitiveFilter(lexicons=[{"path": str(folder)}], thresholds={"a": 2.0}, min_hits=2)
    texts = ["alpha alpha " + "z" * 1500, "色情" * 3, "alpha", "", "色情 " + "q" * 10]
    computed = op.compute(table(texts))
    applied = op.apply(table(texts))
    assert op.decide(computed).to_pylist() == pa.array(applied.reasons, pa.string()).to_pylist()
    assert op.decide(computed).to_pylist() == [None, "sensitive:a", None, None, None]


def test_rename_and_category_selection(tmp_path):
    folder = lexicon(tmp_path, {"色情词库.txt": "色情\n", "民生词库.txt": "打人\n"})
    op = SensitiveFilter(lexicons=[{"path": str(folder)}], rename={"色情词库": "porn"}, categories=["porn"],
                         thresholds={"porn": 0})
    out = run_operators([op], table(["打人了", "色情"]))
    assert [c for c in out.column_names if c.startswith("stat.")] == ["stat.sensitive_porn"]
    assert split_rejected(out)[1].column("reject_reason").to_pylist() == ["sensitive:porn"]


def test_one_category_for_a_whole_folder_and_inside_word_matching(tmp_path):
    folder = lexicon(tmp_path, {"en": "pussy\n", "zh": "贱人\n"})
    op = SensitiveFilter(lexicons=[{"path": str(folder), "category": "Obscene", "match_inside_words": True}])
    out = run_operators([op], table(["pussycat 贱人"]))
    assert out.column("stat.sensitive_obscene").to_pylist() == [2000 / 11]


@pytest.mark.parametrize("text", ["", "a", "。", "，。！？……——", "!!!???...", "😀🎉👍🏽", "🇨🇳🇬🇧", " \n\t "])
def test_edge_cases_measure_zero_and_keep(text):
    out = run_operators([SensitiveFilter(), ZiyaRates()], table([text]))
    kept, rejected = split_rejected(out)
    assert kept.num_rows == 1 and rejected.num_rows == 0
    assert all(out.column(c).to_pylist() == [0.0] for c in out.column_names if c.startswith("stat."))


def test_very_long_line_and_mixed_language():
    long_line = "正常的句子，nothing to see here. " * 30000 + "裸聊约炮"  # ~800k characters
    mixed = "这家店的 coupon 很多，click here 领取优惠券，加微信 abc 了解 free shipping。"
    out = run_operators([SensitiveFilter(), ZiyaRates()], table([long_line, mixed]))
    assert out.column("stat.sensitive_porn")[0].as_py() == pytest.approx(2000 / len(long_line))
    # coupon, click here, 优惠券, 加微信, free shipping
    assert out.column("stat.rate_ad")[1].as_py() == pytest.approx(5000 / len(mixed))
    assert split_rejected(out)[1].num_rows == 0  # 2 hits in 800k characters is far below 1/1000


def test_analyze_mode_marks_without_dropping():
    out = run_operators([SensitiveFilter()], table(["裸聊约炮色情直播", "你好"]), analyze=True)
    kept, rejected = split_rejected(out)
    assert kept.num_rows == 2 and rejected.num_rows == 0
    assert out.column("would_reject").to_pylist() == ["sensitive_filter/sensitive:porn", None]


def test_operators_pickle_without_their_automaton():
    """Ray ships operators to workers by pickling; the automaton is built there, per process."""
    op = SensitiveFilter()
    run_operators([op], table(["色情直播"]))
    clone = pickle.loads(pickle.dumps(op))
    assert len(pickle.dumps(op)) < 5000
    assert run_operators([clone], table(["色情直播"])).column("stat.sensitive_porn").to_pylist() == [250.0]


# --------------------------------------------------------------------------- shipped lexicons


def test_shipped_lexicons_are_well_formed():
    files = sorted(SENSITIVE_DIR.glob("*.txt")) + sorted(ZIYA_DIR.glob("*.txt"))
    assert [f.stem for f in sorted(SENSITIVE_DIR.glob("*.txt"))] == ["drugs", "gambling", "politics", "porn", "violence"]
    assert [f.stem for f in sorted(ZIYA_DIR.glob("*.txt"))] == ["ad", "html", "privacy", "toxic"]
    for f in files:
        terms = [line for line in f.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
        assert 15 <= len(terms) <= 200, f
        assert len(set(terms)) == len(terms), f"duplicate term in {f}"
        assert all(t == t.strip() and t == t.lower() for t in terms), f
        assert any("\u4e00" <= c <= "\u9fff" for t in terms for c in t), f"{f} has no Chinese terms"
        assert any(t.isascii() for t in terms), f"{f} has no English terms"


def test_ziya_rates_columns_and_threshold():
    texts = ["傻逼，去死吧 idiot", "点击这里返回首页 &nbsp; <div class=x>", "加微信领取优惠券，包邮", "请提供身份证号码和家庭住址"]
    out = run_operators([ZiyaRates(thresholds={"toxic": 50.0})], table(texts))
    assert [c for c in out.column_names if c.startswith("stat.")] == RATE_COLUMNS
    rates = np.column_stack([out.column(c).to_numpy() for c in RATE_COLUMNS])
    assert list(rates.argmax(axis=1)) == [1, 3, 2, 0]  # toxic, html, ad, privacy
    assert out.column("stat.rate_toxic")[0].as_py() == pytest.approx(3000 / len(texts[0]))
    _, rejected = split_rejected(out)
    assert rejected.column("reject_reason").to_pylist() == ["rate:toxic"]


def test_ziya_rates_accepts_the_users_lexicons(tmp_path):
    folder = lexicon(tmp_path, {"mytoxic.txt": "dummkopf\n"})
    out = run_operators([ZiyaRates(toxic=[{"path": str(folder)}])], table(["du Dummkopf", "idiot"]))
    assert out.column("stat.rate_toxic").to_pylist() == [1000 / 11 * 1, 0.0]


# --------------------------------------------------------------------------- real lexicons and text


def _weibo(shared: Path, part: str = "usual") -> tuple[list[str], list[str]]:
    lines = (shared / f"zh_uer_corpora/datasets/smp2020-ewect/{part}/train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    rows = [line.split("\t", 1) for line in lines if "\t" in line]
    return [r[1] for r in rows], [r[0] for r in rows]


def _lines(path: Path, limit: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(limit), f) if line.strip()]


def test_users_real_lexicon_folders_load(shared_data):
    words = shared_data / "wordlists"
    op = SensitiveFilter(lexicons=[
        {"path": str(words / "konsheng_sensitive_lexicon/Vocabulary"), "files": ["*.txt"], "separators": ",|"},
        {"path": str(words / "ldnoobw"), "files": ["en", "zh"], "category": "obscene"},
        {"path": str(words / "datatrove_assets/banned_subwords.txt"), "match_inside_words": True},
    ], rename={"色情词库": "porn_zh", "涉枪涉爆": "weapons"}, categories=["porn_zh", "weapons", "obscene", "banned_subwords"],
        thresholds={"porn_zh": 2.0, "weapons": 2.0})
    m = op.matcher
    assert m.categories == ["weapons", "porn_zh", "obscene", "banned_subwords"]
    assert m.size > 1000 and m.compound[0]  # 涉枪涉爆 has `出售|钢珠枪`-style rules
    # 涉枪涉爆 holds co-occurrence rules such as `高压气枪|电狗专卖`.
    assert any(r.parts == ("高压气枪", "电狗专卖") for r in m.compound[0])
    out = run_operators([op], table(["高压气枪，电狗专卖", "watch 2 girls 1 cup now", "a nice class of students"]))
    assert out.column("stat.sensitive_weapons")[0].as_py() > 0
    assert out.column("stat.sensitive_obscene").to_pylist()[1:3] == [1000 / 23, 0.0]


def test_shipped_lexicons_reject_little_clean_text(shared_data):
    """News, Wikipedia-like web text, reviews and Weibo: the default thresholds reject well
    under 1%, and what they reject names real topic words."""
    bbc = [Path(f).read_text(encoding="latin-1") for f in sorted(glob.glob(str(shared_data / "en_bbc_news/bbc/*/*.txt")))[:800]]
    weibo, _ = _weibo(shared_data)
    texts = (bbc + weibo[:8000] + _lines(shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt", 4000)
             + _lines(shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt", 2500))
    out = run_operators([SensitiveFilter()], table(texts))
    _, rejected = split_rejected(out)
    assert rejected.num_rows / len(texts) < 0.005
    for detail in rejected.column("reject_detail").to_pylist():
        assert "hits" in detail and detail.split("; ", 1)[1]


def test_planted_spam_in_real_text_is_caught(shared_data):
    weibo, _ = _weibo(shared_data)
    spam = ["澳门赌场线上娱乐城，真人荷官，开户送彩金", "Best online casino! Free spins and no deposit bonus, bet now",
            "裸聊约炮，色情直播", "出售冰毒海洛因", "出售枪支，网购枪支"]
    texts = weibo[:500] + [f"{weibo[i]} {s}" for i, s in enumerate(spam)]
    _, rejected = split_rejected(run_operators([SensitiveFilter()], table(texts)))
    caught = dict(zip(rejected.column("id").to_pylist(), rejected.column("reject_reason").to_pylist()))
    expected = ["sensitive:gambling", "sensitive:gambling", "sensitive:porn", "sensitive:drugs", "sensitive:violence"]
    assert [caught.get(str(500 + i)) for i in range(len(spam))] == expected


def test_ziya_rates_tell_real_corpora_apart(shared_data):
    """Angry Weibo posts carry more toxic words than happy ones; Reuters SGML carries HTML
    entities (&lt;) that reviews do not; Chinese web text carries more ads than news."""
    weibo, labels = _weibo(shared_data)
    op = ZiyaRates()
    rates = run_operators([op], table(weibo[:12000]))
    toxic = rates.column("stat.rate_toxic").to_numpy()
    labels_arr = np.array(labels[:12000])
    assert toxic[labels_arr == "1"].mean() > 3 * toxic[labels_arr == "2"].mean()  # angry vs happy

    import re
    sgml = (shared_data / "en_reuters21578/reut2-000.sgm").read_text(encoding="latin-1")
    reuters = [re.sub(r"&#\d+;", "", b) for b in re.findall(r"<BODY>(.*?)</BODY>", sgml, re.S)][:500]
    reviews = _lines(shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt", 2000)
    html = lambda texts: run_operators([op], table(texts)).column("stat.rate_html").to_numpy().mean()  # noqa: E731
    assert html(reuters) > 3 * html(reviews)

    bbc = [Path(f).read_text(encoding="latin-1") for f in sorted(glob.glob(str(shared_data / "en_bbc_news/bbc/*/*.txt")))[:500]]
    clue = _lines(shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt", 2500)
    ad = lambda texts: run_operators([op], table(texts)).column("stat.rate_ad").to_numpy().mean()  # noqa: E731
    assert ad(clue) > 3 * ad(bbc)
