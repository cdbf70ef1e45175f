"""pii_mask: generated valid and invalid numbers, real Chinese and English text with and
without planted PII, hand-made edge cases, and one end-to-end run of the example config."""

from __future__ import annotations

import glob
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from common.errors import ConfigError
from operators.base import run_operators, split_rejected
from operators.privacy import (
    PII_TYPES,
    PiiMask,
    find_pii,
    id_check_char,
    is_bank_card,
    is_resident_id,
    luhn_ok,
)
from pipeline.config import parse_config

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- generators


def make_id(rng: random.Random, valid: bool = True) -> str:
    """A resident ID with a real province code and birth date; `valid=False` breaks only the
    check character."""
    region = rng.choice(["110105", "310104", "440305", "510107", "650102", "820000"])
    born = f"{rng.randint(1940, 2010)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    first17 = region + born + f"{rng.randint(0, 999):03d}"
    check = id_check_char(first17)
    if not valid:
        check = rng.choice([c for c in "0123456789X" if c != check])
    return first17 + check


def luhn_complete(partial: str) -> str:
    return next(partial + d for d in "0123456789" if luhn_ok(partial + d))


def make_card(rng: random.Random, prefix: str = "622202", length: int = 16) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return luhn_complete(body)


def make_mobile(rng: random.Random) -> str:
    return f"1{rng.choice('3456789')}{rng.randint(0, 9)}{rng.randint(10000000, 99999999)}"


def found(text: str) -> list[tuple[str, str]]:
    return [(kind, text[s:e]) for s, e, kind in find_pii(text)]


def mask(texts: list[str], **params) -> pa.Table:
    return run_operators([PiiMask(params)], pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}))


# --------------------------------------------------------------------------- validators


def test_id_checksum_matches_the_standard_example():
    # The worked example of GB 11643-1999: 11010519491231002X.
    assert id_check_char("11010519491231002") == "X"
    assert is_resident_id("11010519491231002X")
    assert is_resident_id("11010519491231002x")
    assert not is_resident_id("110105194912310021")  # wrong check digit
    assert not is_resident_id("990105194912310029")  # no province 99
    rng = random.Random(1)
    for _ in range(200):
        assert is_resident_id(make_id(rng))
        assert not is_resident_id(make_id(rng, valid=False))


def test_id_needs_a_real_birth_date():
    for first17 in ("11010519490230002", "11010518991231002", "11010521001231002"):  # Feb 30, 1899, 2100
        assert not is_resident_id(first17 + id_check_char(first17))


def test_luhn_and_card_prefixes():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")
    assert is_bank_card("4111111111111111")
    assert is_bank_card("378282246310005")  # American Express test number
    assert is_bank_card("6011111111111117")  # Discover
    assert is_bank_card("5555555555554444")  # Mastercard
    assert not is_bank_card("0000000000000000")  # Luhn-valid, but no issuer
    assert not is_bank_card("1234567812345670")  # Luhn-valid, prefix 1
    rng = random.Random(2)
    for _ in range(100):
        assert is_bank_card(make_card(rng, "62", rng.choice([16, 19])))


# --------------------------------------------------------------------------- detection


def test_generated_ids_are_found_and_broken_checksums_are_not():
    rng = random.Random(3)
    for _ in range(100):
        good, bad = make_id(rng), make_id(rng, valid=False)
        assert found(f"身份证号{good}，") == [("id_number", good)]
        assert found(f"编号{bad}。") == []  # a random 18-digit number


def test_phones_in_chinese_and_english_writing():
    cases = {
        "联系电话13812345678谢谢": "13812345678",
        "手机：138 1234 5678。": "138 1234 5678",
        "call 138-1234-5678 now": "138-1234-5678",
        "请拨+86 13812345678": "+86 13812345678",
        "请拨008613812345678": "008613812345678",
        "办公室010-62345678转": "010-62345678",
        "订房(0755)2345 6789": "(0755)2345 6789",
        "座机 0571-8765432 联系": "0571-8765432",
        "London office +44 20 7946 0958.": "+44 20 7946 0958",
        "Paris +33 1 42 68 53 00 open": "+33 1 42 68 53 00",
        "call (212) 555-0147 today": "(212) 555-0147",
        "call 1-800-843-9388 for help": "1-800-843-9388",
    }
    for text, number in cases.items():
        assert found(text) == [("phone", number)], text


def test_numbers_that_are_not_pii_are_left_alone():
    rng = random.Random(4)
    not_pii = [
        "2019-03-15 发布", "营收15000000000元", "population 1,234,567,890", "pi is 3.14159265358979",
        "订单号 20190315123456789", "the 2004-2005 season", "score 3-1, 2-0", "版本 v2.13.0",
        "IP 256.1.2.3 is not valid", "01.02.03.04", "at 12:30:45 sharp", "std::vector and a::b",
        "ISBN 978-7-111-54742-6", "tel: 12345", "years 2019 2020 2021 2022 2023",
        "预测 1.4.5.8 号", "1234 5678 9012 3456",  # Luhn fails
        "".join(rng.choice("0123456789") for _ in range(25)),  # longer than any number kind
    ]
    for text in not_pii:
        assert found(text) == [], text


def test_emails_next_to_chinese_and_punctuation():
    assert found("邮箱abc.d@qq.com联系") == [("email", "abc.d@qq.com")]
    assert found("QQ邮箱572437855@qq.com。") == [("email", "572437855@qq.com")]
    assert found("<a href=mailto:x@y.org>x@y.org</a>") == [("email", "x@y.org"), ("email", "x@y.org")]
    assert found("mail Jane.Doe+news@mail.example.co.uk, thanks") == [("email", "Jane.Doe+news@mail.example.co.uk")]
    assert found("@weibo用户 转发") == []
    assert found("a@b") == []


def test_ip_addresses():
    assert found("服务器192.168.1.20宕机") == [("ip", "192.168.1.20")]
    assert found("see 2001:db8::8a2e:370:7334 and fe80::1.") == [("ip", "2001:db8::8a2e:370:7334"), ("ip", "fe80::1")]
    assert found("mapped ::ffff:10.0.0.12 here") == [("ip", "::ffff:10.0.0.12")]
    assert found("http://121.33.203.124/forum/") == [("ip", "121.33.203.124")]


def test_each_item_is_claimed_once_by_the_most_specific_kind():
    rng = random.Random(5)
    for _ in range(50):
        idn = make_id(rng)
        # An ID that also happens to pass Luhn is still an ID, not a card.
        assert [k for k, _ in found(f"号码{idn}号")] == ["id_number"]
    card = make_card(rng)
    grouped = " ".join(card[i:i + 4] for i in range(0, 16, 4))
    assert found(f"卡号{grouped}，") == [("bank_card", grouped)]
    assert found(f"卡号{card}") == [("bank_card", card)]
    assert found(f"card {grouped} 5 pcs") == [("bank_card", grouped)]
    dashed = "-".join(card[i:i + 4] for i in range(0, 16, 4))
    assert found(f"no.{dashed}.") == [("bank_card", dashed)]


# --------------------------------------------------------------------------- operator


def test_mask_replaces_with_placeholders_and_counts_per_type():
    rng = random.Random(6)
    idn, card, mobile = make_id(rng), make_card(rng), make_mobile(rng)
    text = f"张三，身份证{idn}，卡号{card}，手机{mobile}，邮箱zs@example.com，IP 10.1.2.3。"
    out = mask([text, "没有个人信息。"])
    assert out.column("text").to_pylist() == [
        "张三，身份证<ID_NUMBER>，卡号<BANK_CARD>，手机<PHONE>，邮箱<EMAIL>，IP <IP>。", "没有个人信息。"]
    for kind in PII_TYPES:
        assert out.column(f"stat.pii_{kind}").to_pylist() == [1, 0]
    assert out.column("stat.pii_total").to_pylist() == [5, 0]


def test_custom_placeholders_types_and_count_mode():
    text = "mail a@b.com or call 13812345678"
    out = mask([text], placeholders={"email": "[邮箱]", "phone": ""})
    assert out.column("text").to_pylist() == ["mail [邮箱] or call "]
    out = mask([text], types=["email"])
    assert out.column("text").to_pylist() == ["mail <EMAIL> or call 13812345678"]
    assert "stat.pii_phone" not in out.column_names and out.column("stat.pii_total").to_pylist() == [1]
    out = mask([text], mode="count")
    assert out.column("text").to_pylist() == [text]
    assert out.column("stat.pii_total").to_pylist() == [2]


def test_analyze_mode_counts_without_masking_or_dropping():
    texts = ["13812345678 13912345678 13712345678", "plain"]
    table = pa.table({"id": ["a", "b"], "text": texts})
    out = run_operators([PiiMask(max_pii=2)], table, analyze=True)
    assert out.column("text").to_pylist() == texts
    assert out.column("stat.pii_phone").to_pylist() == [3, 0]
    assert out.column("would_reject").to_pylist() == ["pii_mask/too_much_pii", None]


def test_too_much_pii_is_rejected_with_counts_in_detail():
    rng = random.Random(7)
    listing = "；".join(f"王{i} {make_mobile(rng)}" for i in range(6)) + " 联系 office@example.cn"
    out = mask([listing, "客服13812345678"], max_pii=5)
    kept, rejected = split_rejected(out)
    assert kept.column("text").to_pylist() == ["客服<PHONE>"]
    assert rejected.column("reject_reason").to_pylist() == ["too_much_pii"]
    assert rejected.column("reject_op").to_pylist() == ["pii_mask"]
    assert rejected.column("reject_detail").to_pylist() == ["7 PII items > 5: email=1, phone=6"]


def test_bad_params_are_config_errors_with_the_yaml_path():
    base = {"inputs": [{"path": str(REPO / "pyproject.toml"), "format": "txt"}]}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops\[0\]\.pii_mask\.types"):
        parse_config({**base, "stages": [{"name": "p", "ops": [{"pii_mask": {"types": ["ssn"]}}]}]})
    with pytest.raises(ConfigError, match=r"pii_mask\.max_pii"):
        parse_config({**base, "stages": [{"name": "p", "ops": [{"pii_mask": {"max_pii": -1}}]}]})
    with pytest.raises(ConfigError, match=r"pii_mask\.placeholders\.phon: unknown key"):
        parse_config({**base, "stages": [{"name": "p", "ops": [{"pii_mask": {"placeholders": {"phon": "x"}}}]}]})


@pytest.mark.parametrize("text", ["", "a", "。", "，。！？……——", "!!!???...", "😀🎉👍🏽", "🇨🇳🇬🇧", " \n\t "])
def test_edge_cases_pass_through(text):
    out = mask([text])
    assert out.column("text").to_pylist() == [text]
    assert out.column("stat.pii_total").to_pylist() == [0]


def test_very_long_lines_and_mixed_language():
    rng = random.Random(8)
    mobile, card = make_mobile(rng), make_card(rng, "4", 16)
    filler = "数据123，data 456. " * 20000  # ~340k characters of numbers that are not PII
    long_line = filler + f"手机{mobile} card {card} end"
    digits_only = "7" * 200_000  # one enormous digit run
    colons = "a:" * 50_000 + "b"
    mixed = f"Contact 李雷 at lilei@example.com 或者拨打 {mobile}。Thanks!"
    out = mask([long_line, digits_only, colons, mixed])
    texts = out.column("text").to_pylist()
    assert texts[0].endswith("手机<PHONE> card <BANK_CARD> end") and texts[0].startswith(filler[:100])
    assert texts[1] == digits_only and texts[2] == colons
    assert texts[3] == "Contact 李雷 at <EMAIL> 或者拨打 <PHONE>。Thanks!"
    assert out.column("stat.pii_total").to_pylist() == [2, 0, 0, 2]


# --------------------------------------------------------------------------- real text


def _weibo(shared: Path, limit: int) -> list[str]:
    path = shared / "zh_uer_corpora/datasets/smp2020-ewect/usual/train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t", 1)[1] for line in lines if "\t" in line][:limit]


def _lines(path: Path, limit: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for _, line in zip(range(limit), f) if line.strip()]


def _bbc(shared: Path, limit: int) -> list[str]:
    files = sorted(glob.glob(str(shared / "en_bbc_news/bbc/*/*.txt")))[:limit]
    return [Path(f).read_text(encoding="latin-1") for f in files]


def _reuters(shared: Path, limit: int) -> list[str]:
    text = (shared / "en_reuters21578/reut2-000.sgm").read_text(encoding="latin-1")
    return re.findall(r"<BODY>(.*?)</BODY>", text, re.S)[:limit]


def test_news_text_has_no_false_cards_ids_or_phones(shared_data):
    """English news is full of numbers (prices, dates, scores, statistics) and holds no
    personal data: nothing may be masked in 600 BBC articles and 900 Reuters bodies."""
    texts = _bbc(shared_data, 600) + _reuters(shared_data, 900)
    hits = [(kind, t[s:e]) for t in texts for s, e, kind in find_pii(t)]
    assert hits == []


def test_chinese_news_and_reviews_contact_details_are_found(shared_data):
    """THUCNews and CLUE web text carry real service numbers and e-mails; every hit must look
    like what it claims to be."""
    texts = (_lines(shared_data / "zh_thucnews_cnews_sample/data/cnews/cnews.val.txt", 400)
             + _lines(shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt", 1000)
             + _lines(shared_data / "zh_uer_corpora/corpora/chnsenticorp.txt", 3000))
    hits = [(kind, t[s:e]) for t in texts for s, e, kind in find_pii(t)]
    kinds = {kind for kind, _ in hits}
    assert {"phone", "email"} <= kinds and "id_number" not in kinds and "bank_card" not in kinds
    for kind, value in hits:
        digits = re.sub(r"\D", "", value)
        if kind == "phone":
            assert 8 <= len(digits) <= 15, value
        if kind == "email":
            assert re.fullmatch(r"[\w.+%-]+@[\w-]+(\.[\w-]+)*\.[A-Za-z]{2,}", value, re.ASCII), value


def _plant(rng: random.Random, text: str, items: list[str]) -> str:
    """Insert items at random places of the original text (never inside each other), with
    Chinese commas around them: digits right against digits would make one longer number."""
    cuts = sorted(rng.randint(0, len(text)) for _ in items)
    parts, last = [], 0
    for cut, item in zip(cuts, items):
        parts += [text[last:cut], f"，{item}，"]
        last = cut
    return "".join(parts) + text[last:]


def test_planted_pii_in_real_weibo_posts_is_all_masked(shared_data):
    rng = random.Random(9)
    posts = _weibo(shared_data, 3000)
    baseline = mask(posts).column("stat.pii_total").to_pylist()
    makers = {
        "id_number": lambda: make_id(rng),
        "bank_card": lambda: make_card(rng, rng.choice(["622202", "4", "5212"]), 16),
        "phone": lambda: rng.choice([make_mobile(rng), f"+86 {make_mobile(rng)}", "021-6234 5678"]),
        "email": lambda: f"user{rng.randint(1, 99999)}@{rng.choice(['qq.com', '163.com', 'gmail.com'])}",
        "ip": lambda: f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
    }
    planted_texts, planted = [], []
    for post in posts:
        kinds = rng.sample(list(makers), rng.randint(0, 3))
        items = [makers[k]() for k in kinds]
        planted_texts.append(_plant(rng, post, items))
        planted.append((kinds, items))
    out = mask(planted_texts)
    totals = out.column("stat.pii_total").to_pylist()
    for row, (text, (kinds, items)) in enumerate(zip(out.column("text").to_pylist(), planted)):
        for item in items:
            assert item not in text, (item, text)
        assert totals[row] == baseline[row] + len(kinds), planted_texts[row]
        for kind in kinds:
            assert out.column(f"stat.pii_{kind}")[row].as_py() >= 1


# --------------------------------------------------------------------------- end to end


def test_example_config_runs_end_to_end(shared_data, run_config, tmp_path):
    """configs/pipeline/privacy.yaml on 300 real posts with planted PII and spam: masked text
    in data/, rejected rows with reasons, every document accounted for."""
    rng = random.Random(10)
    posts = _weibo(shared_data, 300)
    mobiles = [make_mobile(rng) for _ in range(100)]
    docs = [f"{post}，电话{mobiles[i]}" if i < 100 else post for i, post in enumerate(posts)]
    docs[150] = "；".join(f"客户{i}: {make_mobile(rng)}" for i in range(30))  # a leaked contact list
    docs[151] = "裸聊约炮，加微信看色情直播，av女优无码视频"  # porn spam
    path = tmp_path / "posts.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")

    config = yaml.safe_load((REPO / "configs/pipeline/privacy.yaml").read_text(encoding="utf-8"))
    config["inputs"] = [{"path": str(path), "source": "weibo", "lang": "zh"}]
    config["ray"] = {"num_cpus": 2, "object_store_memory": "300MB", "batch_size": 64}
    _, run_dir = run_config(config)

    stage = next(run_dir.glob("*-privacy"))
    kept = pa.concat_tables([pq.read_table(f) for f in sorted((stage / "data").glob("*.parquet"))])
    rejected = pa.concat_tables([pq.read_table(f) for f in sorted((stage / "rejected").glob("*.parquet"))])
    assert kept.num_rows + rejected.num_rows == len(docs)
    reasons = dict(zip(rejected.column("id").to_pylist(), rejected.column("reject_reason").to_pylist()))
    assert sorted(reasons.values()).count("too_much_pii") == 1
    assert "sensitive:porn" in reasons.values()
    text = "\n".join(kept.column("text").to_pylist())
    assert not any(m in text for m in mobiles)
    assert text.count("电话<PHONE>") == 100
    for column in ("stat.pii_phone", "stat.pii_total", "stat.sensitive_porn", "stat.rate_privacy",
                   "stat.rate_toxic", "stat.rate_ad", "stat.rate_html"):
        assert column in kept.column_names, column
    stage_stats = json.loads((stage / "stats.json").read_text())
    assert stage_stats["docs_in"] == len(docs) and stage_stats["docs_out"] == kept.num_rows


def test_public_dns_addresses_with_one_digit_groups_are_masked():
    """Issue 17 item 9: 10.0.0.1 was masked, 8.8.8.8 and 1.1.1.1 left as they were."""
    out = mask(["DNS 8.8.8.8 and 1.1.1.1 are public; server at 10.0.0.1"]).column("text").to_pylist()
    assert out == ["DNS <IP> and <IP> are public; server at <IP>"]
    assert found("域名解析用 9.9.9.9 即可") == [("ip", "9.9.9.9")]
    assert found("预测 1.4.5.8 号") == []  # list numbering, no address word before it
    assert found("ping 0.0.0.0") == [("ip", "0.0.0.0")]  # the shortest IPv4 form


@pytest.mark.parametrize("kind,text", [
    ("email", "a@b.co"),
    ("ip", "1.2.3.40"), ("ip", "fe80::1"),
    ("id_number", "11010519491231002X"),
    ("bank_card", "4222222222222"),  # 13 digits, Visa prefix, Luhn
    ("phone", "13812345678"), ("phone", "010-2345678"), ("phone", "+1 234 5678"), ("phone", "(415) 555-2671"),
])
def test_every_detector_finds_its_shortest_valid_form(kind, text):
    """Each detector's digit window and validation must let its shortest valid item through."""
    assert found(f"x {text} y") == [(kind, text)]
