"""The demo corpus: a noisy raw corpus built deterministically from the project's own prose,
with ground truth of every piece of noise planted in it.

`make demo` must run on text the project ships (shared test data has licences that forbid
copying it into the repository), and a demo is only convincing when one can check what each
stage caught. So the generator starts from original paragraphs in `configs/demo/source/`
(`<topic><TAB><paragraph>` per line: zh.txt, en.txt, zh_hant.txt; `<lang><TAB><sentence>` in
other_langs.txt) and, for a seed, writes:

    OUT/raw/web.jsonl.gz    id, url, text + crawl metadata; plus malformed lines (broken JSON,
                            invalid UTF-8, an empty text, a record without a text field)
    OUT/raw/news.jsonl      doc_id, title, content (the text field is `content`), published,
                            section
    OUT/raw/forum.txt       one document per line, no id (one line of invalid UTF-8)
    OUT/raw/books.parquet   id, text
    OUT/reference/{zh,en}.txt   held-out clean paragraphs (25%), never in raw/: KenLM
                                training text and quality-classifier positives
    OUT/heldout/{zh,en}.txt     another held-out clean split (10%) for evaluation
    OUT/truth.jsonl         one line per raw record (every line of every file, every parquet
                            row): where it is, the id kiln's reader gives it, the noise kinds
                            planted (empty for a clean document), duplicate links and details

A clean document is 3-8 sentences, runs of consecutive sentences from 1-3 paragraphs of one
topic and one language. Any two documents built from source sentences overlap by at most
0.5 (Jaccard of their sentence sets, weighted by sentence length), so the only
near-duplicates among them are the ones truth.jsonl names.
Noise is planted at the rates of `NOISE_TABLE` (share of all records), one kind per
document; the reader cases and the huge document have fixed counts.

Ids in truth.jsonl (`pipeline_id`) are what `common.readers` produces with each file's
default source name (web, news, forum, books) and `id_field` set to `id` (web, books) and
`doc_id` (news): `<source>:<id>`, or `<source>:<file>:<line>` where a line has no usable id
(forum.txt, and lines that cannot be parsed).

Pure Python and pyarrow; no Ray.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import InputError, KilnError

SOURCE_DIR = Path(__file__).resolve().parents[1] / "configs" / "demo" / "source"
DEFAULT_DOCS = 4000
MIN_DOCS = 200
# Shares of each language's source paragraphs held out of raw/, per topic.
REFERENCE_SHARE = 0.25
HELDOUT_SHARE = 0.10
# Clean documents may share at most this (length-weighted) sentence-set Jaccard with any
# other document, well below the 0.7-0.8 at which near-duplicate detectors cluster.
MAX_SENTENCE_JACCARD = 0.5
MAX_TRIES = 400
# Clean documents stay clear of the length filters a pipeline applies to short junk.
MIN_CLEAN_CHARS = {"zh": 80, "en": 250}

WEB, NEWS, FORUM, BOOKS = "web.jsonl.gz", "news.jsonl", "forum.txt", "books.parquet"
FILES = (WEB, NEWS, FORUM, BOOKS)
FILE_SHARES = {WEB: 0.45, NEWS: 0.20, FORUM: 0.15, BOOKS: 0.20}
# The reader's default source name for each file, and the field holding its id.
SOURCE_NAMES = {WEB: "web", NEWS: "news", FORUM: "forum", BOOKS: "books"}
ID_FIELDS = {WEB: "id", NEWS: "doc_id", FORUM: None, BOOKS: "id"}
TEXT_FIELDS = {WEB: "text", NEWS: "content", FORUM: None, BOOKS: "text"}
ID_PREFIXES = {WEB: "web", NEWS: "news", BOOKS: "book"}
# Characters that end a line for some line splitter (str.splitlines); a forum.txt document
# must contain none of them, and JSON lines escape the ones json.dumps leaves raw.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


# --------------------------------------------------------------------------------------------
# Source text


@dataclass(frozen=True)
class Paragraph:
    lang: str
    topic: str
    text: str
    sentence_ids: tuple[int, ...]


_ZH_SENTENCE = re.compile(r"[^。！？]+(?:[。！？]+[”’」』）]*|$)")
_EN_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def split_sentences(text: str, lang: str) -> list[str]:
    """Sentences of a paragraph: on 。！？ (with closing quotes) for Chinese, on . ! ? followed
    by a capital for the other languages (the source avoids abbreviations)."""
    if lang.startswith("zh"):
        return [s for s in _ZH_SENTENCE.findall(text) if s.strip()]
    return [s for s in _EN_SENTENCE_END.split(text.strip()) if s]


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: demo source file is missing")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("\t")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"{path}:{number}: expected `<key><TAB><text>`")
        rows.append((key.strip(), value.strip()))
    return rows


# --------------------------------------------------------------------------------------------
# Documents


@dataclass
class Doc:
    """One raw record before it is written. `dup_of` and `cluster` are indexes into
    `Generator.docs`; `reader_case` makes the writer break the record on purpose."""

    text: str
    lang: str | None
    topic: str | None
    kinds: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    sentence_ids: tuple[int, ...] = ()
    dup_of: int | None = None
    cluster: int | None = None
    file: str | None = None
    reader_case: str | None = None

    @property
    def single_line(self) -> bool:
        return not any(ch in self.text for ch in LINE_BREAKS)


class Generator:
    """Holds the random stream, the source pools and the documents made so far, and the
    bookkeeping that keeps clean documents distinct."""

    def __init__(self, seed: int, source_dir: Path) -> None:
        self.rng = random.Random(seed)
        self.sentences: list[str] = []
        self.lengths: list[int] = []
        self.topic_of: dict[int, str] = {}
        self.paragraphs: dict[str, list[Paragraph]] = {}
        for lang, name in (("zh", "zh.txt"), ("en", "en.txt"), ("zh-Hant", "zh_hant.txt")):
            self.paragraphs[lang] = [self._paragraph(lang, topic, text)
                                     for topic, text in _read_tsv(source_dir / name)]
        self.other: dict[str, list[int]] = defaultdict(list)
        for lang, sentence in _read_tsv(source_dir / "other_langs.txt"):
            self.other[lang].append(self._sentence(sentence))
        self.split = self._split_paragraphs()
        # Raw-split paragraphs by language and topic: what documents are built from.
        self.pool: dict[str, dict[str, list[Paragraph]]] = {}
        for lang in ("zh", "en", "zh-Hant"):
            by_topic: dict[str, list[Paragraph]] = defaultdict(list)
            for p in self.split[lang]["raw"]:
                by_topic[p.topic].append(p)
            self.pool[lang] = dict(sorted(by_topic.items()))
        self.docs: list[Doc] = []
        self.texts: set[str] = set()
        self.docs_with_sentence: dict[int, list[int]] = defaultdict(list)
        self.claimed_weight: list[int] = []
        self.round_robin: Counter[str] = Counter()

    def _sentence(self, text: str) -> int:
        self.sentences.append(text)
        self.lengths.append(len(text))
        return len(self.sentences) - 1

    def _paragraph(self, lang: str, topic: str, text: str) -> Paragraph:
        ids = tuple(self._sentence(s) for s in split_sentences(text, lang))
        for i in ids:
            self.topic_of[i] = topic
        return Paragraph(lang, topic, text, ids)

    def _split_paragraphs(self) -> dict[str, dict[str, list[Paragraph]]]:
        """Per language and topic: 25% reference, 10% heldout, the rest raw. Traditional
        Chinese paragraphs are all raw (they only feed the conversion case)."""
        split: dict[str, dict[str, list[Paragraph]]] = {}
        for lang, paragraphs in self.paragraphs.items():
            parts: dict[str, list[Paragraph]] = {"reference": [], "heldout": [], "raw": []}
            by_topic: dict[str, list[Paragraph]] = defaultdict(list)
            for p in paragraphs:
                by_topic[p.topic].append(p)
            for topic in sorted(by_topic):
                group = list(by_topic[topic])
                self.rng.shuffle(group)
                if lang == "zh-Hant":
                    parts["raw"] += group
                    continue
                n_ref = round(len(group) * REFERENCE_SHARE)
                n_held = round(len(group) * HELDOUT_SHARE)
                parts["reference"] += group[:n_ref]
                parts["heldout"] += group[n_ref:n_ref + n_held]
                parts["raw"] += group[n_ref + n_held:]
            split[lang] = parts
        return split

    # -- helpers for noise makers --------------------------------------------------------------

    def pick(self, seq: Any) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def lang(self) -> str:
        return "zh" if self.rng.random() < 0.5 else "en"

    def cycle(self, key: str, options: tuple[str, ...]) -> str:
        """Round-robin over `options`, so every variant of a kind appears."""
        value = options[self.round_robin[key] % len(options)]
        self.round_robin[key] += 1
        return value

    def random_sentence(self, lang: str) -> str:
        topic = self.pick(list(self.pool[lang]))
        return self.sentences[self.pick(self.pick(self.pool[lang][topic]).sentence_ids)]

    def _too_similar(self, ids: tuple[int, ...]) -> bool:
        """Whether these sentences overlap an earlier document's by more than
        MAX_SENTENCE_JACCARD, counting each sentence by its length (so the measure tracks the
        character-shingle Jaccard that near-duplicate detection sees)."""
        unique = set(ids)
        lengths, claimed = self.lengths, self.claimed_weight
        shared: dict[int, int] = {}
        for sid in unique:
            for doc in self.docs_with_sentence[sid]:
                shared[doc] = shared.get(doc, 0) + lengths[sid]
        weight = sum(lengths[i] for i in unique)
        return any(w > MAX_SENTENCE_JACCARD * (weight + claimed[d] - w) for d, w in shared.items())

    def _claim(self, ids: tuple[int, ...]) -> None:
        index = len(self.claimed_weight)
        unique = set(ids)
        self.claimed_weight.append(sum(self.lengths[i] for i in unique))
        for sid in unique:
            self.docs_with_sentence[sid].append(index)

    def distinct_sentences(self, choose: Callable[[], tuple[int, ...]], what: str) -> tuple[int, ...]:
        """Draw sentence ids with `choose` until they overlap no earlier document by more than
        MAX_SENTENCE_JACCARD, and claim them."""
        for _ in range(MAX_TRIES):
            ids = choose()
            if ids and not self._too_similar(ids):
                self._claim(ids)
                return ids
        raise KilnError(f"cannot draw another distinct {what} document from the demo source; "
                        "ask for fewer documents (--docs) or a lower rate for this kind")

    def clean(self, lang: str) -> Doc:
        """A fresh clean document: 3-8 sentences, runs of consecutive sentences from 1-3
        paragraphs of one topic; one paragraph, or the sentences laid out as 2-3 paragraphs."""

        def choose() -> tuple[int, ...]:
            paragraphs = self.pool[lang][self.pick(list(self.pool[lang]))]
            n_par = min(len(paragraphs), self.pick((1, 2, 2, 3)))
            chosen = sorted(self.rng.sample(range(len(paragraphs)), n_par))
            want = self.rng.randint(max(3, n_par), 8)
            shares = [want // n_par + (1 if j < want % n_par else 0) for j in range(n_par)]
            ids: list[int] = []
            for p, share in zip(chosen, shares):
                ids += self.run_of(paragraphs[p].sentence_ids, share)
            long_enough = sum(self.lengths[i] for i in ids) >= MIN_CLEAN_CHARS[lang]
            return tuple(ids) if long_enough else ()

        ids = self.distinct_sentences(choose, lang)
        return Doc(self.layout(ids, lang), lang, self.topic_of[ids[0]], [], sentence_ids=ids)

    def run_of(self, ids: tuple[int, ...], n: int) -> list[int]:
        """`n` consecutive sentences of a paragraph, from its start 40% of the time (openings
        introduce their subject; later sentences often refer back to it)."""
        n = min(n, len(ids))
        start = 0 if self.rng.random() < 0.4 else self.rng.randint(0, len(ids) - n)
        return list(ids[start:start + n])

    def layout(self, ids: tuple[int, ...], lang: str) -> str:
        glue = "" if lang.startswith("zh") else " "
        sentences = [self.sentences[i] for i in ids]
        if len(sentences) < 4 or self.rng.random() < 0.5:
            return glue.join(sentences)
        cuts = sorted(self.rng.sample(range(1, len(sentences)), self.rng.randint(1, 2)))
        parts = [sentences[a:b] for a, b in zip([0, *cuts], [*cuts, len(sentences)])]
        return "\n".join(glue.join(p) for p in parts)

    def add(self, doc: Doc) -> int:
        self.docs.append(doc)
        self.texts.add(doc.text)
        return len(self.docs) - 1

    def unique(self, make: Callable[[], str], what: str) -> str:
        """A text no earlier document has, from a maker with random parts."""
        for _ in range(MAX_TRIES):
            text = make()
            if text not in self.texts:
                return text
        raise KilnError(f"cannot make another distinct {what} document; ask for fewer documents")

    def fill(self, template: str) -> str:
        """Fill a template's {placeholders} with fresh random values."""
        r = self.rng
        values = {
            "year": str(r.randint(2012, 2024)),
            "n2": str(r.randint(10, 99)),
            "n3": str(r.randint(100, 999)),
            "n8": str(r.randint(10_000_000, 99_999_999)),
            "wx": "".join(r.choice("abcdefghjkmnpqrstuvwxyz") for _ in range(r.randint(3, 6)))
                  + str(r.randint(100, 99999)),
            "qq": str(r.randint(100_000_000, 2_999_999_999)),
            "mobile": cn_mobile(r),
            "spam_host": self.pick(SPAM_HOSTS),
            "site_zh": self.pick(SITES_ZH),
            "site_en": self.pick(SITES_EN),
            "editor_zh": self.pick("王李张刘陈杨赵黄周吴") + self.pick(("晓明", "丽", "建国", "小红", "志强", "敏", "海燕")),
            "section_zh": self.pick(SECTIONS_ZH),
            "section_en": self.pick(SECTIONS_EN),
            "title_zh": title_of(self.random_sentence("zh"), "zh"),
            "title_zh2": title_of(self.random_sentence("zh"), "zh"),
            "title_en": title_of(self.random_sentence("en"), "en"),
            "title_en2": title_of(self.random_sentence("en"), "en"),
        }
        return template.format_map(values)


def title_of(text: str, lang: str | None) -> str:
    """A headline-like prefix of a text: its first clause (zh) or first words (en)."""
    first = text.strip().split("\n", 1)[0]
    if lang and lang.startswith("zh"):
        return re.split(r"[，。！？；：]", first, maxsplit=1)[0][:20]
    return " ".join(first.split()[:8]).rstrip(".,;:!?")


# --------------------------------------------------------------------------------------------
# Phrase pools for noise (all written for this project)

SITES_ZH = ("晨光资讯网", "山海生活网", "百草园论坛", "云帆新闻网", "知行学堂")
SITES_EN = ("Daily Harbor", "Northfield Post", "The Lantern Review", "Riverside Weekly", "Open Kettle")
SECTIONS_ZH = ("国内", "社会", "科技", "财经", "生活", "文化", "体育", "健康")
SECTIONS_EN = ("World", "Science", "Business", "Life", "Culture", "Sport", "Health", "Travel")
SPAM_HOSTS = ("best-deal-4u.example", "free-gift.example", "cheap-pills.example",
              "lucky-spin.example", "vip-download.example", "win-now.example")

BOILERPLATE = {
    "zh": {
        "head": (
            "首页 | 新闻 | 财经 | 科技 | 体育 | 娱乐 | 关于我们",
            "当前位置：首页 > {section_zh} > 正文",
            "登录 | 注册 | 手机版 | 网站导航",
            "{site_zh} 设为首页 加入收藏",
        ),
        "foot": (
            "版权所有 © 2010-{year} {site_zh} 保留所有权利",
            "上一篇：{title_zh}    下一篇：{title_zh2}",
            "返回首页 | 返回顶部",
            "分享到：微信 微博 QQ空间",
            "责任编辑：{editor_zh}",
            "本文来源于网络，如有侵权请联系删除。",
            "免责声明：本站所载内容仅供参考，不构成任何建议。",
            "备案号：京ICP备{n8}号",
            "扫一扫，关注我们的微信公众号",
            "【相关阅读】{title_zh}",
        ),
    },
    "en": {
        "head": (
            "Home | News | Sport | Business | Culture | Contact",
            "Skip to main content",
            "You are here: Home > {section_en} > Article",
            "Menu Search Sign in Subscribe",
        ),
        "foot": (
            "We use cookies to improve your experience on our site. By continuing to browse, "
            "you agree to our use of cookies. Accept all | Manage preferences",
            "Share on Facebook | Share on Twitter | Share by email",
            "Copyright © {year} {site_en}. All rights reserved.",
            "Privacy Policy | Terms of Use | Contact Us | Sitemap",
            "Related articles: {title_en}",
            "Sign up for our newsletter to get the latest stories in your inbox.",
            "Posted in {section_en} | Leave a comment",
            "Previous post: {title_en} | Next post: {title_en2}",
        ),
    },
}

SPAM_LINES = {
    "zh": (
        "加微信{wx}，免费领取全套学习资料！",
        "加V：{wx}（备注：资料），名额有限先到先得",
        "欢迎加入QQ群：{qq}，每天分享赚钱项目",
        "点击下载APP，新用户注册即送{n2}元红包！！！",
        "代开发票，各类增值税发票，联系电话：{mobile}",
        "招聘兼职打字员，日结{n3}元，详情咨询微信{wx}",
        "【推广】低价出售各类会员账号，QQ：{qq}",
        "最新电影免费在线观看，点击进入：http://{spam_host}/",
        "高薪诚聘，足不出户月入过万，加微信{wx}了解",
        "正品保证，全网最低价，点击链接立即抢购 http://{spam_host}/buy",
        "点击下载全套破解版软件，永久免费使用 http://{spam_host}/soft",
        "专业代写论文、代开发票，价格优惠，加QQ{qq}",
    ),
    "en": (
        "Buy now and save {n2}% - limited time offer! Click here: http://{spam_host}/deal",
        "CLICK HERE to claim your FREE gift card!!!",
        "Best online casino - {n3} free spins and a {n3}% bonus on your first deposit. Sign up today!",
        "Cheap watches, bags and sunglasses at unbeatable prices, visit www.{spam_host}",
        "Work from home and earn ${n3} a day with no experience needed!!!",
        "Lose {n2} pounds in {n2} days with this one weird trick. Order now!",
        "Hot singles in your area are waiting to chat with you. Click here now.",
        "Get your loan approved in minutes, no credit check! Apply at http://{spam_host}/apply",
        "Congratulations! You have been selected to win a brand new phone. Claim your prize here.",
        "Limited offer: buy one get one free on all supplements, click here to buy now",
        "Play casino slots for real money, {n3} dollar welcome bonus, click here",
        "Buy now, pay later! Best prices on replica handbags at http://{spam_host}/shop",
    ),
}
SPAM_KEYWORDS = {
    "zh": ("免费", "下载", "破解版", "最新版", "高清", "无广告", "包邮", "秒杀", "代开发票", "加微信"),
    "en": ("cheap", "free", "buy now", "casino", "bonus", "replica", "discount", "click here", "best price", "win"),
}

SHORT = {
    "zh": ("顶", "沙发", "谢谢楼主分享", "好文，收藏了", "已阅", "mark一下", "路过", "求资源", "同问",
           "赞", "学习了", "支持一下", "楼上说得对", "前排围观", "不明觉厉"),
    "en": ("Thanks", "+1", "Nice post", "lol", "First", "bump", "Great read", "Same here", "Agreed",
           "ok", "This", "nice", "Thanks for sharing", "me too", "following"),
}
SHORT_ENDINGS = {
    "zh": ("", "！", "！！", "~", "。", "👍", " 哈哈", "..."),
    "en": ("", "!", "!!", " :)", "...", " 👍", "?", "."),
}

PII_TEMPLATES = {
    "zh": {
        "email": "如需了解详情，请发送邮件至{value}。",
        "cn_mobile": "联系人王先生，手机{value}，工作日全天可接听。",
        "cn_landline": "报名咨询电话：{value}。",
        "intl_phone": "海外读者可拨打{value}与编辑部联系。",
        "cn_id": "申请人身份证号码为{value}，请核对无误后提交。",
        "ipv4": "当天的访问记录显示，请求来自{value}。",
        "ipv6": "备用服务器的地址是{value}。",
        "bank_card": "捐款可汇入银行卡号{value}，户名为李女士。",
    },
    "en": {
        "email": "Questions can be sent to {value}.",
        "intl_phone": "Call the organizers on {value} during office hours.",
        "bank_card": "Please charge my card {value} for the order.",
        "ipv4": "The server logged the request from {value}.",
        "ipv6": "The backup host answers at {value}.",
        "cn_mobile": "My friend in Shanghai can be reached on {value}.",
    },
}
EMAIL_USERS = ("zhang.wei", "lihua88", "j.smith", "maria.garcia", "chen_jing", "tom.baker",
               "wangfang2019", "a.novak", "liu.yang", "sam.okafor")
EMAIL_DOMAINS = ("example.com", "example.org", "mail.example.cn", "example.net")

LOREM = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
         "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim",
         "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi",
         "aliquip", "ex", "ea", "commodo", "consequat")
SYMBOLS = "!@#$%^&*()_+-=[]{}|;:'\",.<>/?~`§¶•※★☆◆◇■□▲△●○→←↑↓№"

HUGE_LINES = (
    "本站提供最新最全的免费资源下载，每日更新，欢迎收藏本站。",
    "热门推荐：精品资源合集，点击即可免费下载。",
    "友情链接：资源下载站 | 免费素材网 | 在线工具箱",
    "声明：本站资源均来自网络，仅供学习交流使用。",
)
HUGE_BYTES = 200_000


# --------------------------------------------------------------------------------------------
# PII values with valid checksums

CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CN_ID_CHECK = "10X98765432"
CN_REGIONS = ("110101", "310104", "440305", "510107", "330106", "420111", "320102", "610113")


def cn_id_check_digit(first17: str) -> str:
    """GB 11643 check character of a resident identity number."""
    return CN_ID_CHECK[sum(int(d) * w for d, w in zip(first17, CN_ID_WEIGHTS)) % 11]


def luhn_valid(number: str) -> bool:
    digits = [int(d) for d in number][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits))
    return total % 10 == 0


def luhn_complete(partial: str) -> str:
    """`partial` plus the check digit that makes it pass the Luhn test."""
    return next(partial + str(d) for d in range(10) if luhn_valid(partial + str(d)))


def cn_mobile(r: random.Random) -> str:
    return "1" + r.choice("3456789") + "".join(str(r.randint(0, 9)) for _ in range(9))


def pii_value(kind: str, r: random.Random) -> str:
    if kind == "email":
        return f"{r.choice(EMAIL_USERS)}{r.choice(('', str(r.randint(1, 99))))}@{r.choice(EMAIL_DOMAINS)}"
    if kind == "cn_mobile":
        return cn_mobile(r)
    if kind == "cn_landline":
        area, n = r.choice((("010", 8), ("021", 8), ("020", 8), ("0755", 8), ("0571", 8), ("028", 8)))
        digits = str(r.randint(2, 8)) + "".join(str(r.randint(0, 9)) for _ in range(n - 1))
        return r.choice((f"{area}-{digits}", f"({area}){digits}"))
    if kind == "intl_phone":
        return r.choice((
            f"+1 415 555 {r.randint(100, 199):04d}",
            f"+44 20 7946 {r.randint(0, 999):04d}",
            f"+86 10 {r.randint(6000, 8999)} {r.randint(1000, 9999)}",
            f"+49 30 {r.randint(1000000, 9999999)}",
            f"+86 {cn_mobile(r)}",
        ))
    if kind == "cn_id":
        year = r.randint(1950, 2005)
        birth = f"{year}{r.randint(1, 12):02d}{r.randint(1, 28):02d}"
        first17 = r.choice(CN_REGIONS) + birth + f"{r.randint(1, 999):03d}"
        return first17 + cn_id_check_digit(first17)
    if kind == "ipv4":
        first = r.choice((r.randint(11, 126), r.randint(128, 223)))
        return f"{first}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"
    if kind == "ipv6":
        groups = [f"{r.randint(0, 0xFFFF):x}" for _ in range(6)]
        return r.choice(("2001:db8:" + ":".join(groups), f"2001:db8::{groups[0]}:{groups[1]}"))
    if kind == "bank_card":
        prefix, length = r.choice((("62", 16), ("62", 19), ("4", 16), ("51", 16)))
        body = prefix + "".join(str(r.randint(0, 9)) for _ in range(length - len(prefix) - 1))
        return luhn_complete(body)
    raise ValueError(kind)


# --------------------------------------------------------------------------------------------
# Noise kinds: one function per kind, each returning one new document


def insert_at_boundaries(g: Generator, doc: Doc, pieces: list[str], lang: str) -> str:
    """`doc.text` with each piece inserted after a randomly chosen sentence (same line)."""
    sentences = [g.sentences[i] for i in doc.sentence_ids]
    text = doc.text
    for piece in pieces:
        anchor = g.pick(sentences)
        glue = "" if lang.startswith("zh") else " "
        text = text.replace(anchor, anchor + glue + piece, 1)
    return text


def plant_boilerplate(g: Generator) -> Doc:
    lang = g.lang()
    doc = g.clean(lang)
    pool = BOILERPLATE[lang]
    head = [g.fill(t) for t in g.rng.sample(pool["head"], g.rng.randint(1, 2))] if g.rng.random() < 0.6 else []
    foot = [g.fill(t) for t in g.rng.sample(pool["foot"], g.rng.randint(2, 4))]
    doc.text = "\n".join([*head, doc.text, *foot])
    doc.kinds = ["boilerplate"]
    doc.details = {"added_lines": head + foot}
    return doc


def plant_html(g: Generator) -> Doc:
    lang = g.lang()
    doc = g.clean(lang)
    r = g.rng
    used = ["tags"]
    paragraphs = doc.text.split("\n")
    if r.random() < 0.7:
        used.append("entities")
        if lang == "zh":
            paragraphs = ["&nbsp;&nbsp;" + p.replace("“", "&ldquo;").replace("”", "&rdquo;") for p in paragraphs]
        else:
            paragraphs = [p.replace(" and ", " &amp; ", 1).replace("'", "&#39;").replace(". ", ".&nbsp; ", 1)
                          for p in paragraphs]
    body = [f"<p>{p}</p>" if r.random() < 0.8 else f"{p}<br/>" for p in paragraphs]
    lines = ['<div class="article-content">', *body]
    if r.random() < 0.5:
        used.append("link")
        label = "阅读原文" if lang == "zh" else "Read more"
        lines.append(f'<a href="https://{g.pick(SPAM_HOSTS)}/p/{r.randint(1000, 9999)}" target="_blank">{label}</a>')
    if r.random() < 0.6:
        used.append("script")
        lines += [
            '<script type="text/javascript">',
            f"var _stat = _stat || []; _stat.push(['_setAccount', '{r.getrandbits(48):012x}']);",
            "(function() { var s = document.createElement('script'); s.async = true;",
            f"s.src = 'https://stats.example/t.js?v={r.randint(1, 99)}'; document.body.appendChild(s); }})();",
            "</script>",
        ]
    if r.random() < 0.3:
        used.append("style")
        lines.append(f"<style>.article-content p {{ line-height: 1.{r.randint(5, 9)}; margin: 0 0 {r.randint(8, 16)}px; }}</style>")
    if r.random() < 0.3:
        used.append("comment")
        lines.insert(1, "<!-- ad slot: banner-top -->")
    lines.append("</div>")
    doc.text = "\n".join(lines)
    doc.kinds = ["html"]
    doc.details = {"constructs": used}
    return doc


def plant_spam_lines(g: Generator) -> Doc:
    lang = g.lang()
    doc = g.clean(lang)
    ads = [g.fill(g.pick(SPAM_LINES[lang])) for _ in range(g.rng.randint(1, 3))]
    if doc.single_line and g.rng.random() < 0.4:
        doc.text = insert_at_boundaries(g, doc, ads, lang)
    else:
        lines = doc.text.split("\n")
        for ad in ads:
            lines.insert(g.rng.randint(0, len(lines)), ad)
        doc.text = "\n".join(lines)
    doc.kinds = ["spam_lines"]
    doc.details = {"added": ads}
    return doc


def make_spam_doc(g: Generator) -> Doc:
    lang = g.lang()

    def make() -> str:
        lines = [g.fill(t) for t in g.rng.sample(SPAM_LINES[lang], g.rng.randint(3, 6))]
        words = [g.pick(SPAM_KEYWORDS[lang]) for _ in range(g.rng.randint(12, 30))]
        lines.insert(g.rng.randint(0, len(lines)), " ".join(words))
        return ("\n" if g.rng.random() < 0.7 else " ").join(lines)

    return Doc(g.unique(make, "spam"), lang, None, ["spam_doc"])


def plant_pii(g: Generator) -> Doc:
    lang = g.lang()
    doc = g.clean(lang)
    templates = PII_TEMPLATES[lang]
    items = []
    for _ in range(g.rng.randint(1, 3)):
        kind = g.cycle(f"pii/{lang}", tuple(templates))
        items.append({"type": kind, "value": pii_value(kind, g.rng)})
    doc.text = insert_at_boundaries(g, doc, [templates[i["type"]].format(value=i["value"]) for i in items], lang)
    doc.kinds = ["pii"]
    doc.details = {"pii": items}
    return doc


def plant_mixed_lang(g: Generator) -> Doc:
    doc = g.clean("zh")
    english = [g.random_sentence("en") for _ in range(g.rng.randint(1, 3))]
    doc.text = insert_at_boundaries(g, doc, english, "zh")
    doc.lang = "mixed"
    doc.kinds = ["mixed_lang"]
    doc.details = {"en_sentences": len(english)}
    return doc


def to_mojibake(text: str, codec: str) -> str:
    """UTF-8 bytes read back as a single-byte codec, the classic mojibake. Bytes cp1252 leaves
    undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D) become the same-numbered code point, as browsers
    and ftfy's sloppy-windows-1252 do."""
    data = text.encode("utf-8")
    if codec == "latin-1":
        return data.decode("latin-1")
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in data)


def plant_mojibake(g: Generator) -> Doc:
    doc = g.clean("zh")
    codec = g.cycle("mojibake", ("cp1252", "latin-1"))
    clean = doc.text
    doc.text = to_mojibake(clean, codec)
    doc.kinds = ["mojibake"]
    doc.details = {"codec": codec, "expected_text": clean}
    return doc


def _symbol_soup(g: Generator) -> str:
    return "".join(g.pick(SYMBOLS) if g.rng.random() < 0.85 else " " for _ in range(g.rng.randint(150, 600)))


def _keyboard_mash(g: Generator) -> str:
    rows = ("asdfghjkl", "qwertyuiop", "zxcvbnm", "asdfjkl;")
    words = ["".join(g.pick(g.pick(rows)) for _ in range(g.rng.randint(3, 12))) for _ in range(g.rng.randint(20, 60))]
    return " ".join(words)


def _cjk_soup(g: Generator) -> str:
    chars = [chr(g.rng.randint(0x4E00, 0x9FA5)) for _ in range(g.rng.randint(100, 300))]
    for i in range(0, len(chars), g.rng.randint(8, 20)):
        chars[i] = "，"
    return "".join(chars) + "。"


def _char_run(g: Generator) -> str:
    """Long runs of one character, separated by a few words (a 'reply' that is all 啊啊啊)."""
    char = g.pick(("啊", "哈", "6", "!", "=", "-", "。", "a", "😂", "顶", "？", "～"))
    parts = [char * g.rng.randint(40, 400) for _ in range(g.rng.randint(1, 3))]
    return g.pick(("", "楼主", "我", "wow ", "表情 ")) + "\n".join(parts)


def _lorem_ipsum(g: Generator) -> str:
    sentences = []
    for i in range(g.rng.randint(4, 10)):
        words = [g.pick(LOREM) for _ in range(g.rng.randint(6, 16))]
        if i == 0:
            words[:5] = ["lorem", "ipsum", "dolor", "sit", "amet"]
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


JS_STATEMENTS = (
    'var {a} = document.getElementById("{b}");',
    "if (!{a}) {{ return false; }}",
    '{a}.style.display = opts.show ? "block" : "none";',
    "for (var i = 0; i < {b}.length; i++) {{ {a}.appendChild({b}[i]); }}",
    "{a}.setAttribute('data-index', {n});",
    "var {b} = [{n}, {m}, {n}].map(function (x) {{ return x * {m}; }});",
    "$('.{a}').on('click', function (e) {{ e.preventDefault(); $(this).toggleClass('{b}'); }});",
    "setTimeout(function () {{ {a}.classList.add('{b}'); }}, {n}{m});",
    "if ({b}.length > {n}) {{ {b} = {b}.slice(0, {m}); }}",
    "console.log('{a}', {b}, {n});",
)
CSS_PROPERTIES = ("margin: 0 {n}px", "padding: {m}px {n}px", "color: #{hex}", "font-size: {m}px",
                  "background: #{hex}", "border: 1px solid #{hex}", "line-height: 1.{m}",
                  "display: {disp}", "float: {side}", "width: {n}%", "z-index: {n}{m}")


def _code(g: Generator) -> str:
    """A JavaScript function or a CSS sheet, composed from random statements and names."""
    r = g.rng

    def name() -> str:
        return (g.pick(("nav", "menu", "item", "slider", "banner", "box", "tab", "list", "card", "modal"))
                + g.pick(("Item", "Wrap", "Panel", "Btn", "Main", "Top", "")) + str(r.randint(1, 99)))

    def fill(template: str) -> str:
        return template.format(a=name(), b=name(), n=r.randint(0, 99), m=r.randint(1, 9),
                               hex=f"{r.getrandbits(24):06x}", disp=g.pick(("none", "block", "flex")),
                               side=g.pick(("left", "right")))

    if r.random() < 0.5:
        body = [f"  {fill(t)}" for t in r.sample(JS_STATEMENTS, r.randint(4, 8))]
        fn = name()
        return "\n".join([f"function {fn}(opts, items) {{", *body, "  return true;", "}",
                          f'window.addEventListener("load", function () {{ {fn}({{show: true}}, []); }});'])
    rules = []
    for _ in range(r.randint(5, 12)):
        props = "; ".join(fill(t) for t in r.sample(CSS_PROPERTIES, r.randint(2, 5)))
        rules.append(f".{name()} {g.pick(('', 'a', 'li', '> span', ':hover'))} {{ {props}; }}".replace("  ", " "))
    return "\n".join(rules)


def _digit_table(g: Generator) -> str:
    r = g.rng
    rows = [f"2023-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}  {r.uniform(0, 9999):9.2f}  "
            f"{r.randint(0, 99999):6d}  {r.uniform(0, 100):5.1f}%  {r.randint(0, 9)}"
            for _ in range(r.randint(10, 30))]
    return "\n".join(rows)


GARBAGE_VARIANTS: dict[str, Callable[[Generator], str]] = {
    "symbol_soup": _symbol_soup,
    "keyboard_mash": _keyboard_mash,
    "cjk_soup": _cjk_soup,
    "char_run": _char_run,
    "lorem_ipsum": _lorem_ipsum,
    "code": _code,
    "digit_table": _digit_table,
}


def make_garbage(g: Generator) -> Doc:
    variant = g.cycle("garbage", tuple(GARBAGE_VARIANTS))
    text = g.unique(lambda: GARBAGE_VARIANTS[variant](g), "garbage")
    return Doc(text, None, None, ["garbage"], {"variant": variant})


def make_traditional(g: Generator) -> Doc:
    def choose() -> tuple[int, ...]:
        paragraphs = g.pool["zh-Hant"][g.pick(list(g.pool["zh-Hant"]))]
        chosen = g.rng.sample(paragraphs, min(len(paragraphs), g.pick((1, 2))))
        return tuple(sid for p in chosen for sid in g.run_of(p.sentence_ids, g.rng.randint(2, 3)))

    ids = g.distinct_sentences(choose, "traditional Chinese")
    return Doc(g.layout(ids, "zh-Hant"), "zh-Hant", g.topic_of[ids[0]], ["traditional"], sentence_ids=ids)


def make_short(g: Generator) -> Doc:
    lang = g.lang()
    text = g.unique(lambda: g.pick(SHORT[lang]) + g.pick(SHORT_ENDINGS[lang]), "short")
    return Doc(text, lang, None, ["short"])


ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
CONTROL = ("\x01", "\x07", "\x08", "\x0e", "\x1b", "\x7f")


def to_fullwidth(ch: str) -> str:
    return chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch


def plant_normalize(g: Generator) -> Doc:
    """Sprinkle characters that a normalizer must undo: zero-width and control characters
    (to delete), full-width ASCII (NFKC folds it back), odd spaces (NBSP, ideographic space).
    Removing the invisible ones and folding the rest gives `expected_text` back."""
    lang = g.lang()
    doc = g.clean(lang)
    r = g.rng
    chars = list(doc.text)
    planted: Counter[str] = Counter()
    # Full width: whole words in English, every ASCII letter or digit in Chinese text.
    if lang == "en":
        words = [m.span() for m in re.finditer(r"[A-Za-z0-9]+", doc.text)]
        for start, end in r.sample(words, min(len(words), r.randint(1, 4))):
            for i in range(start, end):
                chars[i] = to_fullwidth(chars[i])
                planted["fullwidth"] += 1
        spaces = [i for i, ch in enumerate(chars) if ch == " "]
        for i in r.sample(spaces, min(len(spaces), r.randint(1, 4))):
            chars[i] = "\u00a0"
            planted["odd_space"] += 1
    else:
        for i, ch in enumerate(chars):
            if ch.isascii() and ch.isalnum():
                chars[i] = to_fullwidth(ch)
                planted["fullwidth"] += 1
    for _ in range(r.randint(3, 10)):
        chars.insert(r.randint(1, len(chars)), g.pick(ZERO_WIDTH))
        planted["zero_width"] += 1
    for _ in range(r.randint(1, 3)):
        chars.insert(r.randint(1, len(chars)), g.pick(CONTROL))
        planted["control"] += 1
    text = "".join(chars)
    if lang == "zh":
        text = "\n".join("\u3000\u3000" + line for line in text.split("\n"))  # indented paragraphs
        planted["odd_space"] += 2 * (text.count("\n") + 1)
    expected = doc.text
    doc.text = text
    doc.kinds = ["normalize"]
    doc.details = {"planted": dict(sorted(planted.items())), "expected_text": expected}
    return doc


def make_other_lang(g: Generator) -> Doc:
    lang = g.cycle("other_lang", tuple(sorted(g.other)))
    pool = g.other[lang]

    def choose() -> tuple[int, ...]:
        return tuple(g.rng.sample(pool, g.rng.randint(2, 4)))

    ids = g.distinct_sentences(choose, f"{lang}")
    return Doc(" ".join(g.sentences[i] for i in ids), lang, None, ["other_lang"], sentence_ids=ids)


def make_huge(g: Generator) -> Doc:
    lines: list[str] = []
    size = 0
    while size < HUGE_BYTES:
        line = HUGE_LINES[len(lines) % len(HUGE_LINES)]
        lines.append(line)
        size += len(line.encode("utf-8")) + 1
    return Doc("\n".join(lines), "zh", None, ["huge"], {"bytes": size - 1, "lines": len(lines)}, file=BOOKS)


# Reader cases: the document is a clean one; the writer breaks its record.

def make_malformed_json(g: Generator) -> Doc:
    doc = g.clean(g.lang())
    doc.kinds, doc.file, doc.reader_case = ["malformed_json"], WEB, "malformed_json"
    doc.details = {"how": g.cycle("malformed_json", ("truncated", "single_quotes", "missing_comma"))}
    return doc


def make_invalid_utf8(g: Generator) -> Doc:
    file = g.cycle("invalid_utf8", (WEB, FORUM))
    doc = g.clean(g.lang())
    while not doc.single_line:  # forum.txt holds one line per document
        doc = g.clean(doc.lang)
    doc.kinds, doc.file, doc.reader_case = ["invalid_utf8"], file, "invalid_utf8"
    return doc


def make_empty_text(g: Generator) -> Doc:
    return Doc("", None, None, ["empty_text"], file=WEB, reader_case="empty_text")


def make_missing_text(g: Generator) -> Doc:
    doc = g.clean(g.lang())
    doc.kinds, doc.file, doc.reader_case = ["missing_text"], WEB, "missing_text"
    return doc


@dataclass(frozen=True)
class NoiseKind:
    name: str
    rate: float  # share of all raw records
    count: int  # fixed number of records instead of a rate (reader cases, the huge document)
    make: Callable[[Generator], Doc] | None  # None: duplicates, made last from clean documents
    what: str


NOISE_TABLE: tuple[NoiseKind, ...] = (
    NoiseKind("exact_dup", 0.04, 0, None, "byte-identical copy of a clean document, often in another file"),
    NoiseKind("near_dup", 0.05, 0, None, "5-15% character (zh) or word (en) edits in 1-3 spans; a third are chains A~B~C"),
    NoiseKind("boilerplate", 0.05, 0, plant_boilerplate, "navigation/header lines before, cookie/share/copyright/上一篇 lines after"),
    NoiseKind("html", 0.04, 0, plant_html, "tags, entities (&nbsp; &amp; &ldquo;), <script>/<style> blocks, links"),
    NoiseKind("spam_lines", 0.03, 0, plant_spam_lines, "1-3 ad lines (加微信, QQ群, 代开发票, buy now, casino) in a clean document"),
    NoiseKind("spam_doc", 0.02, 0, make_spam_doc, "a whole document of ads and keyword stuffing"),
    NoiseKind("pii", 0.04, 0, plant_pii, "1-3 sentences carrying e-mail, phones, resident ID, IPv4/6, card numbers"),
    NoiseKind("mixed_lang", 0.02, 0, plant_mixed_lang, "Chinese document with 1-3 English sentences inside"),
    NoiseKind("mojibake", 0.01, 0, plant_mojibake, "Chinese UTF-8 decoded as cp1252 or latin-1 (repairable)"),
    NoiseKind("garbage", 0.03, 0, make_garbage, "symbol soup, keyboard mash, random CJK, character runs, lorem ipsum, code, digit tables"),
    NoiseKind("traditional", 0.0075, 0, make_traditional, "Traditional Chinese document (zh_hant.txt)"),
    NoiseKind("short", 0.01, 0, make_short, "a few characters: 顶, 沙发, +1, Thanks!"),
    NoiseKind("normalize", 0.03, 0, plant_normalize, "zero-width/control characters, full-width ASCII, NBSP/ideographic spaces"),
    NoiseKind("other_lang", 0.01, 0, make_other_lang, "Spanish, French, German or Russian document"),
    NoiseKind("huge", 0.0, 1, make_huge, "~200 KB of four repeated lines (books.parquet)"),
    NoiseKind("malformed_json", 0.0, 3, make_malformed_json, "web.jsonl.gz line that is not JSON"),
    NoiseKind("invalid_utf8", 0.0, 2, make_invalid_utf8, "a line with invalid UTF-8 bytes (one in web, one in forum)"),
    NoiseKind("empty_text", 0.0, 1, make_empty_text, "web record whose text is empty"),
    NoiseKind("missing_text", 0.0, 1, make_missing_text, "web record without a text field"),
)
KINDS = {k.name: k for k in NOISE_TABLE}
DEFAULT_RATES = {k.name: k.rate for k in NOISE_TABLE if k.count == 0}


# --------------------------------------------------------------------------------------------
# Duplicates


def char_shingles(text: str, n: int = 5) -> set[str]:
    """Character n-grams of the text with whitespace collapsed: the yardstick recorded in
    truth.jsonl for near-duplicates."""
    s = " ".join(text.split())
    return {s[i:i + n] for i in range(max(1, len(s) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = char_shingles(a), char_shingles(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def edit_text(g: Generator, text: str, lang: str) -> tuple[str, float]:
    """A near-duplicate of `text`: 5-15% of its characters (zh) or words (en) replaced,
    inserted or deleted, in 1-3 contiguous spans, the way a re-post differs from its source.
    New material comes from other source sentences of the same language."""
    r = g.rng
    zh = lang.startswith("zh")
    units = list(text) if zh else text.split(" ")
    n = len(units)
    budget = max(1, math.ceil(0.05 * n), min(math.floor(0.15 * n), round(r.uniform(0.05, 0.15) * n)))
    n_spans = r.randint(1, min(3, budget))
    cuts = sorted(r.sample(range(1, budget), n_spans - 1)) if n_spans > 1 else []
    for size in (b - a for a, b in zip([0, *cuts], [*cuts, budget])):
        donor = g.random_sentence(lang)
        donor_units = list(donor) if zh else donor.split(" ")
        start = r.randrange(max(1, len(donor_units) - size + 1))
        new = donor_units[start:start + size]
        pos = r.randrange(len(units))
        op = r.choice(("replace", "insert", "delete"))
        if op == "replace":
            units[pos:pos + size] = new
        elif op == "insert":
            units[pos:pos] = new
        else:
            del units[pos:pos + size]
    return ("" if zh else " ").join(units), budget / n


def make_exact_dups(g: Generator, n: int, originals: list[int]) -> None:
    made = 0
    for orig in originals:
        for _ in range(2 if g.rng.random() < 0.2 else 1):
            if made == n:
                return
            src = g.docs[orig]
            src.cluster = orig
            g.add(Doc(src.text, src.lang, src.topic, ["exact_dup"], dup_of=orig, cluster=orig))
            made += 1


def make_near_dups(g: Generator, n: int, originals: list[int]) -> None:
    made = 0
    for orig in originals:
        chain = 2 if g.rng.random() < 1 / 3 else 1
        parent = orig
        for _ in range(chain):
            if made == n:
                return
            g.docs[orig].cluster = orig
            src = g.docs[parent]
            for _ in range(MAX_TRIES):
                text, ratio = edit_text(g, src.text, src.lang)
                if text not in g.texts and text.strip():
                    break
            else:
                raise KilnError("cannot make a distinct near-duplicate; ask for fewer documents")
            details = {"edit_ratio": round(ratio, 3), "jaccard_to_dup_of": round(jaccard(text, src.text), 3)}
            if parent != orig:
                details["jaccard_to_cluster"] = round(jaccard(text, g.docs[orig].text), 3)
            parent = g.add(Doc(text, src.lang, src.topic, ["near_dup"], details, dup_of=parent, cluster=orig))
            made += 1


# --------------------------------------------------------------------------------------------
# Planning, placement and writing


@dataclass
class Summary:
    out_dir: Path
    docs: int
    seconds: float
    per_file: dict[str, int]
    per_kind: dict[str, int]
    per_lang: dict[str, int]
    reference: dict[str, int]
    heldout: dict[str, int]


def plan_counts(docs: int, rates: dict[str, float]) -> dict[str, int]:
    """How many records of each kind; the rest are clean documents."""
    counts = {}
    for kind in NOISE_TABLE:
        counts[kind.name] = kind.count if kind.count else (max(1, round(rates[kind.name] * docs)) if rates[kind.name] > 0 else 0)
    return counts


def check_rates(rates: dict[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_RATES)
    for name, rate in (rates or {}).items():
        if name not in DEFAULT_RATES:
            raise KilnError(f"unknown noise kind {name!r}; kinds with a rate: {', '.join(DEFAULT_RATES)}")
        if not 0 <= rate < 1:
            raise KilnError(f"rate of {name} must be in [0, 1), got {rate}")
        merged[name] = float(rate)
    if sum(merged.values()) > 0.8:
        raise KilnError(f"noise rates sum to {sum(merged.values()):.2f}; keep them under 0.8 so that enough clean documents remain")
    return merged


def _json_line(record: dict[str, Any]) -> bytes:
    line = json.dumps(record, ensure_ascii=False)
    for ch in "\x85\u2028\u2029":  # json.dumps leaves these raw; some line splitters break on them
        line = line.replace(ch, f"\\u{ord(ch):04x}")
    return line.encode("utf-8")


def _break_json(doc: Doc, record: dict[str, Any]) -> bytes:
    good = json.dumps(record, ensure_ascii=False)
    how = doc.details["how"]
    if how == "truncated":
        return good[: len(good) // 2].encode("utf-8")
    if how == "single_quotes":  # a Python dict repr instead of JSON
        return repr(record).encode("utf-8")
    return good.replace('", "text"', '" "text"', 1).encode("utf-8")  # missing comma


def _with_invalid_utf8(data: bytes, r: random.Random) -> tuple[bytes, str]:
    """`data` with a byte sequence that is not UTF-8 inserted at a character boundary."""
    bad = r.choice((b"\xff\xfe", b"\xc3\x28", b"\xe4\xb8", b"\x80", b"\xed\xa0\x80"))
    text = data.decode("utf-8")
    cut = r.randrange(len(text) // 4, 3 * len(text) // 4)
    return text[:cut].encode("utf-8") + bad + text[cut:].encode("utf-8"), bad.hex()


def place(g: Generator, order: list[int]) -> dict[str, list[int]]:
    """Assign every document to a file. forum.txt takes single-line documents only, so its
    weight among those is raised to keep its overall share; exact duplicates land in another
    file than their original 70% of the time."""
    eligible = sum(1 for i in order if g.docs[i].single_line and g.docs[i].file is None)
    forum_p = min(0.9, FILE_SHARES[FORUM] * len(order) / max(1, eligible))
    files: dict[str, list[int]] = {f: [] for f in FILES}
    where: dict[int, str] = {}
    for i in sorted(order, key=lambda i: g.docs[i].dup_of is not None):  # originals first
        doc = g.docs[i]
        if doc.file:
            where[i] = doc.file
            continue
        choices = [f for f in FILES if f != FORUM or doc.single_line]
        if doc.dup_of is not None and "exact_dup" in doc.kinds and g.rng.random() < 0.7:
            choices = [f for f in choices if f != where[doc.dup_of]] or choices
        if FORUM in choices and g.rng.random() < forum_p:
            where[i] = FORUM
            continue
        rest = [f for f in choices if f != FORUM]
        where[i] = g.rng.choices(rest, weights=[FILE_SHARES[f] for f in rest])[0]
    for i in order:  # file order follows the global shuffle
        files[where[i]].append(i)
    return files


def generate(out_dir: str | Path, docs: int = DEFAULT_DOCS, seed: int = 0,
             rates: dict[str, float] | None = None, source_dir: str | Path | None = None) -> Summary:
    """Write the demo corpus for `seed` into `out_dir` (see the module docstring)."""
    started = time.perf_counter()
    if docs < MIN_DOCS:
        raise KilnError(f"--docs must be at least {MIN_DOCS}, got {docs}")
    rates = check_rates(rates)
    g = Generator(seed, Path(source_dir) if source_dir else SOURCE_DIR)
    counts = plan_counts(docs, rates)
    n_clean = docs - sum(counts.values())
    n_originals = counts["exact_dup"] + counts["near_dup"]
    if n_clean < n_originals:
        raise KilnError(f"{docs} documents leave {n_clean} clean ones, fewer than the {n_originals} "
                        "duplicates need as originals; raise --docs or lower the duplicate rates")

    for kind in NOISE_TABLE:
        if kind.make is not None:
            for _ in range(counts[kind.name]):
                doc = kind.make(g)
                if doc.text in g.texts and doc.reader_case is None:
                    raise KilnError(f"internal: {kind.name} made a document that already exists")
                g.add(doc)
    # Clean documents: languages chosen so that the corpus ends up about half Chinese.
    # Duplicates copy clean documents, so they follow the clean documents' language mix.
    zh_so_far = sum(1 for d in g.docs if d.lang in ("zh", "zh-Hant", "mixed"))
    en_so_far = sum(1 for d in g.docs if d.lang == "en")
    total = zh_so_far + en_so_far + n_clean + n_originals
    zh_share = (total / 2 - zh_so_far) / (n_clean + n_originals)
    n_zh = min(n_clean, max(0, round(zh_share * n_clean)))
    langs = ["zh"] * n_zh + ["en"] * (n_clean - n_zh)
    g.rng.shuffle(langs)
    clean_ids = [g.add(g.clean(lang)) for lang in langs]
    originals = g.rng.sample(clean_ids, n_originals)
    make_exact_dups(g, counts["exact_dup"], originals[: counts["exact_dup"]])
    make_near_dups(g, counts["near_dup"], originals[counts["exact_dup"]:])

    order = list(range(len(g.docs)))
    g.rng.shuffle(order)
    files = place(g, order)
    out = Path(out_dir)
    truth = write_raw(g, files, out / "raw")
    write_truth(truth, out / "truth.jsonl")
    reference, heldout = {}, {}
    for lang in ("zh", "en"):
        reference[lang] = _write_lines(out / "reference" / f"{lang}.txt", [p.text for p in g.split[lang]["reference"]])
        heldout[lang] = _write_lines(out / "heldout" / f"{lang}.txt", [p.text for p in g.split[lang]["heldout"]])
    per_kind = Counter(k for d in g.docs for k in d.kinds)
    per_kind["clean"] = sum(1 for d in g.docs if not d.kinds)
    return Summary(out, len(g.docs), time.perf_counter() - started,
                   {f: len(v) for f, v in files.items()}, dict(per_kind),
                   dict(Counter(d.lang or "none" for d in g.docs)), reference, heldout)


def _write_lines(path: Path, lines: list[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def write_raw(g: Generator, files: dict[str, list[int]], raw: Path) -> list[dict[str, Any]]:
    """Write the four raw files; return one truth entry per record, in file order."""
    import pyarrow as pa  # here, so that `kiln --help` does not pay for pyarrow (and pandas)
    import pyarrow.parquet as pq

    raw.mkdir(parents=True, exist_ok=True)
    r = g.rng
    keys: dict[int, str] = {}
    entries: list[tuple[int, dict[str, Any]]] = []
    lines: dict[str, list[bytes]] = {WEB: [], NEWS: [], FORUM: []}
    book_ids: list[str] = []
    book_texts: list[str] = []
    for file in FILES:
        source = SOURCE_NAMES[file]
        for number, i in enumerate(files[file], 1):
            doc = g.docs[i]
            rec_id = f"{ID_PREFIXES[file]}-{number:05d}" if file in ID_PREFIXES else None
            position = {"row" if file == BOOKS else "line": number}
            pipeline_id = f"{source}:{rec_id}" if rec_id else f"{source}:{file}:{number}"
            details = dict(doc.details)
            if file == WEB:
                topic = doc.topic or "misc"
                url = f"https://{g.pick(('www', 'news', 'blog', 'm'))}.{topic}-{r.randint(1, 40)}.example/{r.randint(2015, 2024)}/{r.randint(1, 12):02d}/{rec_id}.html"
                record = {"id": rec_id, "url": url, "text": doc.text,
                          "crawl_date": f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                          "status": 200, "content_type": "text/html; charset=utf-8"}
                if doc.reader_case == "missing_text":
                    record["body"] = record.pop("text")
                if doc.reader_case == "malformed_json":
                    line = _break_json(doc, record)
                    pipeline_id = f"{source}:{file}:{number}"
                elif doc.reader_case == "invalid_utf8":
                    line, details["bad_bytes"] = _with_invalid_utf8(_json_line(record), r)
                    pipeline_id = f"{source}:{file}:{number}"
                else:
                    line = _json_line(record)
                lines[WEB].append(line)
            elif file == NEWS:
                record = {"doc_id": rec_id, "title": title_of(doc.text, doc.lang), "content": doc.text,
                          "published": f"20{r.randint(15, 24)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                          "section": doc.topic or "misc"}
                lines[NEWS].append(_json_line(record))
            elif file == FORUM:
                data = doc.text.encode("utf-8")
                if doc.reader_case == "invalid_utf8":
                    data, details["bad_bytes"] = _with_invalid_utf8(data, r)
                lines[FORUM].append(data)
            else:
                book_ids.append(rec_id)
                book_texts.append(doc.text)
            keys[i] = pipeline_id
            entries.append((i, {"file": file, **position, "id": rec_id, "pipeline_id": pipeline_id,
                                "kinds": doc.kinds, "lang": doc.lang, "topic": doc.topic,
                                "chars": len(doc.text), "details": details}))
    for file in (NEWS, FORUM):
        (raw / file).write_bytes(b"".join(line + b"\n" for line in lines[file]))
    with open(raw / WEB, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(b"".join(line + b"\n" for line in lines[WEB]))
    pq.write_table(pa.table({"id": pa.array(book_ids, pa.string()), "text": pa.array(book_texts, pa.string())}),
                   raw / BOOKS, compression="zstd")
    truth = []
    for i, entry in entries:
        doc = g.docs[i]
        entry["dup_of"] = keys[doc.dup_of] if doc.dup_of is not None else None
        entry["cluster"] = keys[doc.cluster] if doc.cluster is not None else None
        truth.append(entry)
    return truth


def write_truth(truth: list[dict[str, Any]], path: Path) -> None:
    order = ("file", "line", "row", "id", "pipeline_id", "kinds", "lang", "topic", "chars", "dup_of", "cluster", "details")
    with open(path, "w", encoding="utf-8") as f:
        for entry in truth:
            f.write(json.dumps({k: entry[k] for k in order if k in entry}, ensure_ascii=False) + "\n")


def nfkc_fold(text: str) -> str:
    """What a normalizer is expected to make of a `normalize` document: invisible and control
    characters removed, full-width ASCII and odd spaces folded (NFKC on those characters only,
    so Chinese full-width punctuation stays)."""
    out = []
    for ch in text:
        if ch in ZERO_WIDTH or ch in CONTROL:
            continue
        if ("\uff01" <= ch <= "\uff5e" and unicodedata.normalize("NFKC", ch).isalnum()) or ch == "\u00a0":
            ch = unicodedata.normalize("NFKC", ch)
        out.append(ch)
    return "\n".join(line.removeprefix("\u3000\u3000") for line in "".join(out).split("\n"))
