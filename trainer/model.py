"""The model side of training: build or load a LLaMA, fit its vocabulary to the shards'
tokenizer, choose the attention kernel, and know its own FLOPs and memory needs.

Vocabulary expansion follows Colossal-LLaMA-2: when the shards were tokenized with an
expanded tokenizer (new pieces appended after the base vocabulary), each new row of the input
embeddings and of lm_head starts as the mean of the rows of the pieces the *old* tokenizer
splits that token's text into, so a new token starts where its old spelling pointed.

Packed sequences: `position_ids` restart at 0 for every document. With no attention mask and
no cache, transformers 5 derives the document boundaries from them: for sdpa/eager a
block-diagonal causal mask per row (masking_utils `find_packed_sequence_indices`). For
flash_attention_2, `packed_forward` flattens the micro-batch into one row (every row starts a
document, so rows stay apart too) and passes the varlen kernels' cu_seq_lens and maximum
lengths itself, computed once on the host: transformers would derive them from position_ids in
every layer, with host-device syncs. tests/test_trainer.py checks the isolation.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from common.errors import ConfigError, InputError, KilnError

# Dense bf16 tensor-core peak per GPU, TFLOPS (NVIDIA datasheets, without sparsity), for MFU.
# torch names devices "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL",
# "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA A100-SXM4-80GB", ...: the first pattern found in the
# name wins, so the slower PCIe and NVL parts come before their family. Unknown devices get no MFU.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
                    ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def attention_implementation(requested: str) -> str:
    if requested in ("sdpa", "eager"):
        return requested
    problem = flash_attention_problem()
    if requested == "flash_attention_2":
        if problem:
            raise KilnError(f"model.attention: flash_attention_2 cannot run here: {problem}")
        return requested
    if problem and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        print(f"kiln train: model.attention auto: using sdpa, {problem}", file=sys.stderr)
    return "sdpa" if problem else "flash_attention_2"


def flash_attention_available() -> bool:
    return flash_attention_problem() is None


@functools.cache
def flash_attention_problem() -> str | None:
    """Why flash_attention_2 cannot run in this process, or None. The package being importable
    is not enough: a flash-attn wheel built for another torch or CUDA fails on import (undefined
    symbols in flash_attn_2_cuda), which would otherwise surface as a crash in the first layer."""
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install 'kiln[gpu]')"
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401 - loads the compiled kernels
    except (ImportError, OSError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:200]
        return (f"flash-attn is installed but does not load against torch {torch.__version__} ({reason}); "
                "reinstall it for this torch: pip install --no-build-isolation --force-reinstall flash-attn")
    return None


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_tflops_of(torch.cuda.get_device_name(device))


def peak_tflops_of(device_name: str) -> float | None:
    name = device_name.lower()
    return next((tflops for pattern, tflops in PEAK_BF16_TFLOPS if pattern.lower() in name), None)


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the weights that multiply plus 12·L·H·T for attention
    scores and values (PaLM appendix B), with T the full sequence length, an upper bound for
    packed documents, which attend only within themselves. N leaves out the input embedding (a
    lookup), but not with tied embeddings: the shared matrix is then also lm_head, a matmul."""
    total, embedding = count_params(config)
    matmul_params = total if config.tie_word_embeddings else total - embedding
    return 6.0 * matmul_params + 12.0 * config.num_hidden_layers * config.hidden_size * seq_len


def check_checkpoint(path: str) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise InputError(f"model.checkpoint: {folder} is not a folder (a local HF LLaMA checkpoint is needed; "
                         "nothing is downloaded)")
    if not (folder / "config.json").exists():
        raise InputError(f"model.checkpoint: {folder} has no config.json (not an HF model folder)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise InputError(f"model.checkpoint: {folder} has no weights (*.safetensors or *.bin)")
    return folder


def llama_config(opts_config: dict[str, Any] | None, checkpoint: str | None, vocab_size: int, seq_len: int,
                 special: dict[str, int | None]):
    from transformers import LlamaConfig

    if checkpoint:
        return LlamaConfig.from_pretrained(checkpoint)
    kwargs = {"max_position_embeddings": max(seq_len, 2048), "tie_word_embeddings": False, **(opts_config or {})}
    try:
        return LlamaConfig(vocab_size=vocab_size, bos_token_id=special.get("bos_id"), eos_token_id=special["eos_id"],
                           pad_token_id=special["pad_id"], **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.config: {e}") from None


def count_params(config) -> tuple[int, int]:
    """(all parameters, embedding parameters) without allocating the model."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    return total, emb


def estimate_memory_bytes(n_params: int, config, micro_batch: int, seq_len: int, world: int,
                          activation_checkpointing: bool) -> int:
    """fp32 weights + grads + AdamW moments (16 B/param, sharded over ranks by FSDP) plus bf16
    activations: ~34·b·T·H bytes per layer without checkpointing (Korthikanti et al.), 2·b·T·H with,
    plus fp32 logits and their gradient."""
    b, t, h = micro_batch, seq_len, config.hidden_size
    per_layer = (2 if activation_checkpointing else 34) * b * t * h
    logits = 3 * 4 * b * t * config.vocab_size
    return 16 * n_params // world + config.num_hidden_layers * per_layer + logits


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model"))


def check_tokenizers(old, new, old_vocab: int) -> None:
    """The shards' tokenizer must extend the model's: the first `old_vocab` ids name the same pieces."""
    n = min(old_vocab, len(old), len(new))
    old_pieces = old.convert_ids_to_tokens(list(range(n)))
    new_pieces = new.convert_ids_to_tokens(list(range(n)))
    bad = [i for i in range(n) if old_pieces[i] != new_pieces[i]]
    if bad:
        i = bad[0]
        raise InputError(f"the shards were tokenized with a different tokenizer than the model's: {len(bad)} of "
                         f"the model's first {n} ids differ (id {i}: model {old_pieces[i]!r}, shards {new_pieces[i]!r})")


def mean_init_rows(model, new_vocab: int, pieces_of: Callable[[int], Sequence[int]]) -> int:
    """Resize the model to `new_vocab` rows and set each new input/output row to the mean of the
    old rows `pieces_of(token_id)` (the old tokenizer's split of that token). Returns rows added."""
    old_vocab = model.get_input_embeddings().weight.shape[0]
    if new_vocab <= old_vocab:
        return 0
    model.resize_token_embeddings(new_vocab, mean_resizing=False)
    inp = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    with torch.no_grad():
        for tid in range(old_vocab, new_vocab):
            ids = [i for i in pieces_of(tid) if 0 <= i < old_vocab]
            idx = torch.tensor(ids, dtype=torch.long) if ids else torch.arange(old_vocab)
            inp[tid] = inp[idx].mean(0)
            if out is not None and out.data_ptr() != inp.data_ptr():
                out[tid] = out[idx].mean(0)
    return new_vocab - old_vocab


def expand_vocabulary(model, old_tok, new_tok, new_vocab: int) -> int:
    def pieces_of(tid: int) -> list[int]:
        text = new_tok.decode([tid])
        return old_tok.encode(text, add_special_tokens=False) if text else []

    return mean_init_rows(model, new_vocab, pieces_of)


def build_model(config, checkpoint: str | None, attention: str, seed: int):
    """fp32 master weights; bf16 compute comes from autocast / FSDP mixed precision."""
    from transformers import LlamaForCausalLM

    if checkpoint:
        try:
            return LlamaForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation=attention)
        except (OSError, ValueError) as e:
            raise InputError(f"model.checkpoint: cannot load {checkpoint}: {e}") from None
    torch.manual_seed(seed)
    config._attn_implementation = attention
    return LlamaForCausalLM(config).to(torch.float32)


def packed_forward(model, input_ids: torch.Tensor, position_ids: torch.Tensor, attention: str) -> torch.Tensor:
    """Logits (b, T, V) of packed rows, documents isolated by their position_ids. position_ids
    may stay on the host (the loader's tensor): the FlashAttention boundaries come from it."""
    b, t = input_ids.shape
    if attention == "flash_attention_2":
        varlen = flash_varlen_kwargs(position_ids, input_ids.device)
        position_ids = position_ids.to(input_ids.device, non_blocking=True)
        logits = model(input_ids=input_ids.reshape(1, -1), position_ids=position_ids.reshape(1, -1),
                       use_cache=False, **varlen).logits
        return logits.reshape(b, t, -1)
    position_ids = position_ids.to(input_ids.device, non_blocking=True)
    return model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits


def flash_varlen_kwargs(position_ids: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """FlashAttention's varlen arguments for the rows of a micro-batch flattened into one: a
    document starts where its position is 0, and every row starts one. Without them transformers
    derives the same from position_ids in every layer, with three host-device syncs each (and
    graph breaks under torch.compile); here they are computed once, on the host, with the
    maximum lengths as Python ints."""
    pos = position_ids.detach().cpu()
    starts = pos == 0
    starts[:, 0] = True
    flat = starts.reshape(-1)
    cu_seq_lens = torch.cat([flat.nonzero().flatten(), torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(cu_seq_lens.diff().max())
    if device.type == "cuda":
        cu_seq_lens = cu_seq_lens.pin_memory().to(device, non_blocking=True)
    return {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens, "max_length_q": longest,
            "max_length_k": longest}


def is_embedding(name: str) -> bool:
    return "embed_tokens" in name or name.startswith("lm_head") or ".lm_head" in name


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Norm weights, biases (any 1-D tensor) are not decayed."""
    return param.ndim < 2 or "norm" in name or name.endswith(".bias")


def copy_tokenizer(src: Path, dest: Path) -> None:
    import shutil

    for name in (*TOKENIZER_FILES, "added_tokens.json"):
        if (src / name).exists():
            shutil.copy2(src / name, dest / name)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}
