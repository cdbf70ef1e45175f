"""SentencePiece training, Chinese vocabulary expansion, the Hugging Face twin, `kiln tokenizer`."""

from __future__ import annotations

import json

import pytest

from common.errors import InputError, KilnError
from pipeline import tokenizer as T
from pipeline.cli import main

# Whitespace and byte-fallback cases where SentencePiece and naive HF conversions differ.
EDGE_CASES = [
    "", " ", "  two leading spaces", "trailing spaces   ", "x  y   z", "tab\there", "a\n\nb", "\n",
    "emoji 😀 and 𠀀 (outside the BMP)", "mixed 中文 English 123,456.78", "Ünïcödé ﬁ ligature", "▁ literal",
]


def bbc_texts(shared_data, every=1):
    files = sorted((shared_data / "en_bbc_news/bbc").glob("*/*.txt"))[::every]
    return [f.read_text(encoding="latin-1") for f in files]


def clue_texts(shared_data):
    path = shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt"
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def english(shared_data):
    texts = bbc_texts(shared_data)
    return texts[::2], texts[1::2][:300]  # train, held out


@pytest.fixture(scope="module")
def base_bpe(tmp_path_factory, english):
    out = tmp_path_factory.mktemp("base_bpe")
    T.train_sentencepiece(english[0], out, T.TrainOptions(vocab_size=3000, model_type="bpe"))
    return out


@pytest.fixture(scope="module")
def expanded(tmp_path_factory, base_bpe, shared_data, english):
    out = tmp_path_factory.mktemp("expanded")
    report = T.expand_sentencepiece(base_bpe / T.MODEL_FILE, clue_texts(shared_data), out, add=3000, max_chars=2000,
                                    eval_en=english[1], word_sample_chars=400_000)
    return out, report


def sp_ids(folder, texts):
    return T.sentencepiece_processor(folder).encode(list(texts))


def hf_ids(folder, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def test_trained_model_has_llama_settings(base_bpe):
    proto = T.load_model_proto(base_bpe)
    assert len(proto.pieces) == 3000
    assert [p.piece for p in proto.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.split_digits
    assert not proto.normalizer_spec.remove_extra_whitespaces
    assert sum(p.type == T.BYTE for p in proto.pieces) == 256


def test_hf_twin_encodes_exactly_like_sentencepiece(base_bpe, english, shared_data):
    texts = english[1][:150] + clue_texts(shared_data)[:150] + EDGE_CASES
    assert hf_ids(base_bpe, texts) == sp_ids(base_bpe, texts)
    # Chinese is all byte fallback in an English vocabulary, and still decodes exactly.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base_bpe / "tokenizer.json"))
    decoded = [tok.decode(ids) for ids in hf_ids(base_bpe, texts)]
    assert decoded == T.sentencepiece_processor(base_bpe).decode(sp_ids(base_bpe, texts))
    # Exact round trip, except that a literal ▁ comes back as a space, in both encoders.
    assert decoded == [t.replace("▁", " ") for t in texts]


def test_unigram_twin_encodes_exactly_like_sentencepiece(tmp_path, english, shared_data):
    T.train_sentencepiece(english[0][:300] + clue_texts(shared_data)[:300], tmp_path,
                          T.TrainOptions(vocab_size=3000, model_type="unigram", character_coverage=0.98))
    texts = english[1][:100] + clue_texts(shared_data)[300:400] + EDGE_CASES
    assert hf_ids(tmp_path, texts) == sp_ids(tmp_path, texts)


def test_autotokenizer_loads_the_folder(base_bpe):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_bpe))
    text = "Shares in the company rose 5% on Monday."
    assert tok(text)["input_ids"] == [1, *sp_ids(base_bpe, [text])[0]]  # BOS first, like LLaMA
    assert (tok.bos_token_id, tok.eos_token_id, len(tok)) == (1, 2, 3000)
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_expansion_keeps_old_ids_and_english_and_compresses_chinese(base_bpe, expanded, english):
    out, report = expanded
    old = [p.piece for p in T.load_model_proto(base_bpe).pieces]
    new = [p.piece for p in T.load_model_proto(out).pieces]
    assert new[: len(old)] == old  # every old token keeps its id (and its trained embedding)
    assert len(new) == len(set(new)) == report.vocab <= len(old) + 3000
    assert report.added_chars == 2000 and report.added_words > 100
    assert all(T._HAN_WORD.fullmatch(w) for w in report.examples["words"])
    zh, en = report.compression["zh"], report.compression["en"]
    assert zh["texts"] > 100 and en["texts"] == 300
    assert zh["expanded"] < 0.5 * zh["base"]  # byte fallback (3 tokens a character) is gone
    assert en["expanded_tokens"] == en["base_tokens"]  # English is not worse: it is identical
    assert sp_ids(out, english[1][:100]) == sp_ids(base_bpe, english[1][:100])
    saved = json.loads((out / T.EXPANSION_REPORT).read_text())
    assert saved["compression"]["zh"]["expanded"] == pytest.approx(zh["expanded"])
    assert "zh tokens/char" in report.table() and "en tokens/char" in report.table()


def test_expanded_hf_twin_is_exact(expanded, english, shared_data):
    out, _ = expanded
    texts = clue_texts(shared_data)[-200:] + english[1][:100] + EDGE_CASES
    assert hf_ids(out, texts) == sp_ids(out, texts)


def test_words_need_a_bpe_path_and_characters_come_first():
    candidates = T.Candidates(chars=[("中", 9), ("国", 8), ("人", 7)],
                              words=[("中国人", 6), ("中国", 5), ("外国", 4)], counted_chars=100)
    chars, words = T.choose_pieces(candidates, vocab={"a"}, add=10, bpe=True)
    assert [c for c, _ in chars] == ["中", "国", "人"]
    # 中国人 is reachable only after 中国 arrives; 外国 has a character the vocabulary lacks.
    assert [w for w, _ in words] == ["中国", "中国人"]
    chars, words = T.choose_pieces(candidates, vocab=set(), add=10, bpe=False)
    assert [w for w, _ in words] == ["中国人", "中国"]
    chars, words = T.choose_pieces(candidates, vocab=set(), add=2, bpe=True)
    assert len(chars) == 2 and not words


def test_characters_only_expansion(tmp_path, base_bpe, shared_data):
    report = T.expand_sentencepiece(base_bpe, clue_texts(shared_data)[:600], tmp_path, add=500, words=False)
    assert (report.added_chars, report.added_words, report.vocab) == (500, 0, 3500)
    assert report.compression["en"]["texts"] == 0  # no English held out from a Chinese corpus
    assert "n/a" in report.table()


def test_training_sentences_cut_long_lines():
    long = "这是一个很长的句子。" * 1000
    pieces = list(T.training_sentences([long, "short\n\n  line  "], max_chars=400))
    assert all(len(p) <= 400 for p in pieces)
    assert "".join(pieces[:-2]) == long and pieces[-2:] == ["short", "line"]


def test_clear_errors(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a SentencePiece model"):
        T.load_model_proto(tmp_path / "bad.model")
    with pytest.raises(InputError, match="no text"):
        T.train_sentencepiece(["", "   "], tmp_path / "t", T.TrainOptions(vocab_size=100))
    tiny = ["a few words of tiny text, and a few more"] * 5
    with pytest.raises(KilnError, match="Vocabulary size"):
        T.train_sentencepiece(tiny, tmp_path / "t", T.TrainOptions(vocab_size=5000))
    T.train_sentencepiece(tiny, tmp_path / "t", T.TrainOptions(vocab_size=5000, hard_vocab_limit=False))
    assert 259 < len(T.load_model_proto(tmp_path / "t").pieces) < 5000  # a soft limit takes what there is
    with pytest.raises(InputError, match="does not exist"):
        T.prepare_hf_folder(tmp_path / "missing.model", tmp_path / "hf")


def test_cli_train_expand_export(tmp_path, shared_data, capsys):
    en = tmp_path / "en.txt"
    en.write_text("\n".join(t.replace("\n", " ") for t in bbc_texts(shared_data, every=6)))
    zh = shared_data / "zh_uer_corpora/corpora/CLUECorpusSmall_sampled.txt"
    assert main(["tokenizer", "train", str(en), "--out", str(tmp_path / "base"), "--vocab-size", "1500"]) == 0
    assert "same ids" in capsys.readouterr().out
    assert main(["tokenizer", "expand", "--base", str(tmp_path / "base/tokenizer.model"), "--corpus", str(zh),
                 "--eval-en", str(en), "--add", "800", "--word-sample-chars", "100000",
                 "--out", str(tmp_path / "big")]) == 0
    out = capsys.readouterr().out
    assert "from 1,500 to 2,300 pieces" in out and "zh tokens/char" in out and "same ids" in out
    assert main(["tokenizer", "export", str(tmp_path / "big/tokenizer.model"), "--out", str(tmp_path / "hf"),
                 "--check", str(zh)]) == 0
    assert (tmp_path / "hf/tokenizer.json").read_text() == (tmp_path / "big/tokenizer.json").read_text()
    assert main(["tokenizer", "expand", "--base", str(tmp_path / "nope.model"), "--corpus", str(zh),
                 "--add", "5", "--out", str(tmp_path / "x")]) == 2
    assert "no SentencePiece model" in capsys.readouterr().err


def test_a_normalising_base_model(tmp_path, english, shared_data):
    """SentencePiece's own defaults (NFKC, extra whitespace removed): the twin follows them,
    and expansion skips characters that NFKC rewrites (full-width punctuation)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(english[0][:300]), model_writer=model, vocab_size=1500,
                                   byte_fallback=True, minloglevel=2)
    (tmp_path / "nfkc.model").write_bytes(model.getvalue())
    report = T.expand_sentencepiece(tmp_path / "nfkc.model", clue_texts(shared_data)[:300], tmp_path / "out",
                                    add=500, words=False)
    added = [p.piece for p in T.load_model_proto(tmp_path / "out").pieces[1500:]]
    assert "，" not in added and "。" in added and report.added_chars == 500
    texts = clue_texts(shared_data)[-50:] + english[1][:50] + EDGE_CASES + ["ｆｕｌｌ ｗｉｄｔｈ，ＡＢＣ１２３"]
    assert hf_ids(tmp_path / "out", texts) == sp_ids(tmp_path / "out", texts)
