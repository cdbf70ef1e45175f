"""`kiln eval`: perplexity against a direct computation, multiple choice with a forced answer."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from common.errors import KilnError  # noqa: E402
from pipeline.cli import main  # noqa: E402
from trainer import evaluate  # noqa: E402

TEXT = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "A tiny model reads a short sentence and predicts the next token.",
    "Data cleaning removes boilerplate, duplicates and broken markup from web text.",
    "今天天气很好，我们去公园散步，看见很多人在跑步。",
    "模型在干净的文本上训练，困惑度通常更低。",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A randomly initialised 2-layer LlamaForCausalLM and a tiny SentencePiece tokenizer,
    saved as a Hugging Face folder like a training run's final/."""
    from pipeline.tokenizer import TrainOptions, train_sentencepiece

    folder = tmp_path_factory.mktemp("tiny-model")
    corpus = TEXT * 20 + ["Answer: A B C D E", "答案：A B C D", "The following are multiple choice questions."] * 20
    train_sentencepiece(corpus, folder, TrainOptions(vocab_size=500, hard_vocab_limit=False, num_threads=1))
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(str(folder))
    return folder


def _direct_ppl(folder, texts):
    """exp(mean token NLL), by hand: BOS + tokens through the model, one document at a time."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    total, count = 0.0, 0
    for text in texts:
        ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0].double()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp[torch.arange(len(ids) - 1), x[0, 1:]]
        total += float(nll.sum())
        count += len(ids) - 1
    return math.exp(total / count), count


def test_perplexity_matches_direct_computation(tiny_model, tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"text": t, "source": "s"}, ensure_ascii=False) + "\n" for t in TEXT))
    loaded = evaluate.load_model(tiny_model, device="cpu")
    docs = evaluate.read_eval_docs(path)
    # Batched with padding (documents of different lengths in one batch).
    rows = {(r.group, r.name): r for r in evaluate.perplexity(loaded, docs, batch_size=4)}
    expected, count = _direct_ppl(tiny_model, TEXT)
    assert rows[("all", "all")].tokens == count
    assert rows[("all", "all")].ppl == pytest.approx(expected, rel=1e-4)
    # Per language: the Chinese lines alone.
    zh_expected, _ = _direct_ppl(tiny_model, TEXT[3:])
    assert rows[("lang", "zh")].ppl == pytest.approx(zh_expected, rel=1e-4)
    assert rows[("lang", "en")].docs == 3 and rows[("source", "s")].docs == 5
    assert rows[("all", "all")].bits_per_byte == pytest.approx(
        rows[("all", "all")].nll / math.log(2) / sum(len(t.encode()) for t in TEXT))


def test_long_documents_are_windowed_and_every_token_scored(tiny_model):
    assert evaluate.windows(10, 4) == [(0, 4), (3, 7), (6, 10)]
    assert evaluate.windows(2, 4) == [(0, 2)]
    loaded = evaluate.load_model(tiny_model, device="cpu", max_length=8)
    long = " ".join(TEXT[:3])
    sequences = evaluate.encode_documents(loaded.tokenizer, [long])
    nll, count = evaluate.token_nll(loaded, sequences)
    assert count[0] == len(sequences[0]) - 1
    # By hand: each window's own predictions, in one forward pass per window.
    total = 0.0
    for s, e in evaluate.windows(len(sequences[0]), 8):
        x = torch.tensor([sequences[0][s:e]])
        with torch.no_grad():
            logp = torch.log_softmax(loaded.model(input_ids=x).logits[0].double(), -1)
        total += float(-logp[torch.arange(e - s - 1), x[0, 1:]].sum())
    assert nll[0] == pytest.approx(total, rel=1e-5)


class ForcedModel(torch.nn.Module):
    """Stands in for a causal LM: at every position it gives the highest logit to the token of
    the letter whose option, in the last question of the prompt, contains the word CORRECT.
    A scorer that reads the wrong position, maps letters to the wrong tokens or mixes up rows
    of a padded batch gets answers wrong."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=4096)

    def forward(self, input_ids, attention_mask):
        vocab = len(self.tokenizer)
        logits = torch.zeros(*input_ids.shape, vocab)
        for row in range(input_ids.shape[0]):
            n = int(attention_mask[row].sum())
            text = self.tokenizer.decode(input_ids[row, :n].tolist())
            last = text.rsplit("\n\n", 1)[-1]
            for line in last.splitlines():
                if "CORRECT" in line and line[1:2] == ".":
                    chinese = "答案" in last
                    token = evaluate.letter_ids(self.tokenizer, "答案：" if chinese else "Answer:", 4, chinese)[
                        evaluate.LETTERS.index(line[0])]
                    logits[row, n - 1, token] = 10.0
        return SimpleNamespace(logits=logits)


def _questions(answers, chinese=False):
    items = []
    for i, answer in enumerate(answers):
        options = {letter: f"option {letter} {i}" for letter in "ABCD"}
        options[answer] = f"option {answer} {i} CORRECT"
        question = f"第{i}题：哪个是对的？" if chinese else f"Question {i}: which one is right?"
        items.append({"question": question, **options, "answer": answer, "subject": "forced"})
    return items


def test_multiple_choice_picks_the_forced_letter(tiny_model, tmp_path):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_model))
    loaded = evaluate.LoadedModel(model=ForcedModel(tok), tokenizer=tok, device=torch.device("cpu"),
                                  max_length=4096, path="forced")
    answers = list("ACBDDACB")
    path = tmp_path / "forced.jsonl"
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in _questions(answers)))
    result = evaluate.multiple_choice(loaded, path, k=2, batch_size=3)
    assert result.skipped_shots == 2 and result.total == 6
    assert [p["predicted"] for p in result.predictions] == answers[2:]
    assert result.accuracy == 1.0
    # MMLU form (choices + answer index), Chinese prompts, a dev file for the shots.
    zh = tmp_path / "zh.jsonl"
    zh.write_text("".join(json.dumps({"question": q["question"], "choices": [q[x] for x in "ABCD"],
                                      "answer": "ABCD".index(q["answer"])}, ensure_ascii=False) + "\n"
                          for q in _questions(list("DBCA"), chinese=True)))
    result = evaluate.multiple_choice(loaded, zh, k=1, dev=path, batch_size=2)
    assert result.total == 4 and [p["predicted"] for p in result.predictions] == list("DBCA")
    # A model that always answers A scores exactly the share of A answers: the scorer
    # really compares letters, it does not echo the key.
    flat = evaluate.LoadedModel(model=_ConstantModel(tok, evaluate.letter_ids(tok, "Answer:", 4, False)[0]),
                                tokenizer=tok, device=torch.device("cpu"), max_length=4096, path="a")
    result = evaluate.multiple_choice(flat, path, k=0)
    assert result.correct == answers.count("A")


class _ConstantModel(torch.nn.Module):
    def __init__(self, tokenizer, token):
        super().__init__()
        self.vocab, self.token = len(tokenizer), token
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.token] = 1.0
        return SimpleNamespace(logits=logits)


def test_cli_writes_json_and_rejects_bad_input(tiny_model, tmp_path, capsys):
    text = tmp_path / "held.txt"
    text.write_text("\n".join(TEXT) + "\n")
    questions = tmp_path / "mmlu_dev.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in _questions(list("ABCDAB"))))
    out = tmp_path / "res.json"
    assert main(["eval", str(tiny_model), "--text", str(text), "--choice", str(questions), "-k", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["perplexity"][-1]["name"] == "all" and results["perplexity"][-1]["docs"] == len(TEXT)
    assert results["multiple_choice"][0]["questions"] == 5
    assert "perplexity" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "A": "x", "B": "y", "answer": "E"}) + "\n")
    assert main(["eval", str(tiny_model), "--choice", str(bad), "--device", "cpu"]) == 2
    assert "answer 'E' is not one of A, B" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--text", str(text)]) == 2
    with pytest.raises(KilnError, match="nothing to evaluate"):
        evaluate.run_eval(evaluate.EvalRequest(model=str(tiny_model)))
