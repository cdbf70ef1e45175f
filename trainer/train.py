"""`kiln train`: continual pretraining of a LLaMA on kiln shards, in one flat loop.

One process, or many under torchrun (FSDP2 `fully_shard` per decoder layer, then the whole
model; a lone GPU process too, in a one-rank group, so one GPU and many share the precision
policy: bf16 parameters for compute, fp32 master weights and gradient reduction). The loop,
phase by phase:

1. setup     - config, shards (validated), tokenizer checks, memory estimate: every
               user-fixable problem is a KilnError here, before weights load.
2. model     - from a local HF checkpoint or a config; vocabulary expansion with mean init;
               attention kernel; activation checkpointing / torch.compile; FSDP2.
3. resume    - newest checkpoint in output/checkpoints (model, optimizer, step = data position).
4. steps     - micro-batches of this rank, bf16 autocast, fp32 loss summed over target tokens
               and divided by the global step's target tokens (so accumulation and ranks give
               the same gradient as one big batch: FSDP sums the ranks' gradients, and reduces
               them once per step when accumulating, where memory allows), clip, AdamW,
               warmup + cosine lr.
5. log       - metrics.jsonl (+ TensorBoard), progress bar.
6. save      - torch.distributed.checkpoint every N steps, atomically (tmp dir, rename), last
               K kept; final/ in HF format with the shards' tokenizer; train.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from common.errors import InputError, KilnError
from trainer import model as M
from trainer.config import TrainConfig
from trainer.data import DataPlan, ShardData

CHECKPOINT_RE = re.compile(r"^step-(\d{6,})$")


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    tokens: int
    final_loss: float


# ------------------------------------------------------------------------------ small helpers


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to `peak`, then cosine down to `min_ratio * peak` at the last step."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    span = max(1, total - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()
             and (p / "trainer_state.json").exists()]
    return sorted(found)


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


@contextlib.contextmanager
def _quiet_dcp():
    """DCP warns that it assumes one process when torch.distributed is not started: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class Dist:
    """Rank, world and device; torchrun's environment variables when present. `sharded`: the
    model goes through FSDP2 - with several ranks, and on a GPU even alone (a one-rank group), so
    one GPU trains with the same precision policy as many: bf16 parameters for compute over fp32
    master weights. A lone CPU process trains the plain module under autocast."""

    def __init__(self, sharded: bool | None = None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and local >= gpus:
            raise KilnError(f"this process is local rank {local} but the node has {gpus} visible GPU(s): start "
                            f"at most {gpus} processes per node (torchrun --nproc_per_node {gpus}), or hide the GPUs "
                            "(CUDA_VISIBLE_DEVICES=) to train on CPU with gloo")
        self.device = torch.device(f"cuda:{local}") if gpus else torch.device("cpu")
        self.sharded = self.world > 1 or (self.device.type == "cuda" if sharded is None else sharded)
        self.started = False
        if self.sharded and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.world == 1:  # no torchrun: a one-rank group needs no rendezvous
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            else:
                dist.init_process_group(backend)
            self.started = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------ checkpoints


def save_checkpoint(folder: Path, step: int, model, optimizer, plan: DataPlan, env: Dist, keep: int,
                    meta: dict[str, Any]) -> Path:
    """DCP folder written under a .tmp name and renamed once complete, so a crash mid-write
    never leaves a folder that looks like a checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = folder / f"step-{step:06d}"
    tmp = folder / f"step-{step:06d}.tmp"
    if env.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    env.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _quiet_dcp():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    env.barrier()
    if env.main:
        state = {"step": step, "sequences_consumed": step * plan.global_batch, "global_batch": plan.global_batch,
                 "tokens": step * plan.tokens_per_step, **meta}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    env.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, plan: DataPlan) -> int:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    state = json.loads((path / "trainer_state.json").read_text())
    if state["global_batch"] != plan.global_batch:
        raise KilnError(f"{path}: saved with a global batch of {state['global_batch']} sequences, this run uses "
                        f"{plan.global_batch} (micro_batch_size x grad_accum_steps x ranks); keep it equal to resume, "
                        "or use a new output / --set train.resume=false")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        with _quiet_dcp():
            saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
            # get_state_dict gives every parameter AdamW state, but a checkpoint from a `train:
            # embeddings` phase holds state only for the embeddings (the others have not taken a
            # step yet): load the state that was saved; the rest starts at its first step, as it
            # would have without the interruption.
            optim_sd["state"] = {fqn: st for fqn, st in optim_sd["state"].items()
                                 if all(f"optim.state.{fqn}.{key}" in saved for key in st)}
            sd = {"model": model_sd, "optim": optim_sd}
            dcp.load(sd, checkpoint_id=str(path))
    # DCP wraps its errors in CheckpointException, a BaseException: name it, or it escapes as a traceback.
    except (Exception, CheckpointException) as e:
        if isinstance(e, CheckpointException) and e.failures:  # (exception, traceback) per rank
            e = next(iter(e.failures.values()))[0]
        reason = " ".join(str(e).split())[:300]
        raise KilnError(f"{path}: cannot resume, the checkpoint does not match this model/config ({reason}); "
                        "use a new output or --set train.resume=false") from None
    # strict=False: parameters without saved optimizer state (above) are allowed; the model's
    # keys were all checked by dcp.load, which fails on any key the checkpoint lacks.
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"],
                   options=StateDictOptions(strict=False))
    return int(state["step"])


# ------------------------------------------------------------------------------ export


def export_hf(model, hf_config, out: Path, tokenizer_dir: Path, dtype: str, env: Dist) -> Path:
    """final/ in HF format: full (unsharded) weights gathered to rank 0, plus the tokenizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import LlamaForCausalLM

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=env.sharded, cpu_offload=True))
    if env.main:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        with torch.device("meta"):
            export = LlamaForCausalLM(hf_config)
        export.load_state_dict({k: v.detach().to("cpu", torch_dtype) for k, v in sd.items()}, assign=True)
        export.config.dtype = torch_dtype
        export.save_pretrained(tmp)
        M.copy_tokenizer(tokenizer_dir, tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    env.barrier()
    return out


# ------------------------------------------------------------------------------ the run


def train(cfg: TrainConfig, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Run (or resume) a training run; `on_step(step)` is called after every optimizer step
    (benchmarks time steps with it)."""
    t_start = time.time()
    env = Dist()
    try:
        return _train(cfg, env, t_start, on_step)
    finally:
        env.close()


def _train(cfg: TrainConfig, env: Dist, t_start: float, on_step: Callable[[int], None] | None) -> TrainResult:
    from transformers import LlamaConfig

    tc, mc = cfg.train, cfg.model
    out = cfg.output_dir
    ckpt_dir = out / "checkpoints"

    # ---- 1. setup: everything a user can fix fails here, before the weights load -------------
    data = ShardData(cfg.data.shards, check_hashes=cfg.data.check_hashes)
    manifest = data.manifest
    tok_dir = data.folder / manifest.tokenizer.path
    if not M.has_tokenizer(tok_dir):
        raise InputError(f"{data.folder}: the manifest's tokenizer {tok_dir} is missing")
    plan = DataPlan(data, cfg.data, tc.seed, tc.micro_batch_size, tc.grad_accum_steps, env.world,
                    tc.max_steps, tc.max_tokens)
    attention = M.attention_implementation(mc.attention)
    special = {"bos_id": manifest.tokenizer.bos_id, "eos_id": manifest.tokenizer.eos_id,
               "pad_id": manifest.tokenizer.pad_id}
    new_tok = M.load_tokenizer(tok_dir)
    shard_vocab = max(manifest.tokenizer.vocab_size, len(new_tok))
    old_tok = None
    if mc.checkpoint:
        ck = M.check_checkpoint(mc.checkpoint)
        hf_config = M.llama_config(None, mc.checkpoint, shard_vocab, data.seq_len, special)
        if M.has_tokenizer(ck):
            old_tok = M.load_tokenizer(ck)
            M.check_tokenizers(old_tok, new_tok, hf_config.vocab_size)
        elif shard_vocab > hf_config.vocab_size:
            raise InputError(f"model.checkpoint: {ck} has no tokenizer, so the {shard_vocab - hf_config.vocab_size} "
                             "new tokens of the shards' tokenizer cannot be initialised from their old pieces")
        if data.seq_len > hf_config.max_position_embeddings:
            raise InputError(f"shards are {data.seq_len} tokens long, the model takes at most "
                             f"{hf_config.max_position_embeddings}")
    else:
        hf_config = M.llama_config(mc.config, None, shard_vocab, data.seq_len, special)
    assert isinstance(hf_config, LlamaConfig)
    sized = LlamaConfig(**{**hf_config.to_dict(), "vocab_size": max(hf_config.vocab_size, shard_vocab)})
    n_params, _ = M.count_params(sized)
    need = M.estimate_memory_bytes(n_params, sized, tc.micro_batch_size, data.seq_len, env.world,
                                   mc.activation_checkpointing)
    have = M.available_memory_bytes(env.device)
    if need > have:
        raise KilnError(f"the run needs about {need / 2**30:.1f} GiB per {'GPU' if env.device.type == 'cuda' else 'process'} "
                        f"({n_params / 1e6:.0f}M parameters: fp32 weights, grads and AdamW state, plus activations) "
                        f"but {have / 2**30:.1f} GiB are available; use more GPUs (FSDP shards the state), a smaller "
                        "micro_batch_size, or model.activation_checkpointing: true")
    # Accumulating over ranks, FSDP2 can keep each micro-batch's gradients unsharded (fp32) and
    # reduce-scatter once per step instead of once per micro-batch: less communication for 4
    # bytes per parameter on every rank. Taken only where that still fits.
    defer_grad_sync = env.world > 1 and tc.grad_accum_steps > 1 and need + 4 * n_params <= have

    # ---- 2. model -----------------------------------------------------------------------------
    model = M.build_model(hf_config, mc.checkpoint, attention, tc.seed)
    added = 0
    if old_tok is not None and shard_vocab > model.get_input_embeddings().weight.shape[0]:
        added = M.expand_vocabulary(model, old_tok, new_tok, shard_vocab)
    hf_config = model.config
    hf_config.use_cache = False
    # from_pretrained returns the model in eval mode, and HF layers recompute activations only
    # when `self.training`: without this, activation checkpointing is silently off.
    model.train()
    if mc.activation_checkpointing:
        # transformers 5 renamed gradient_ to activation_checkpointing_enable (the old name warns).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not env.sharded:
        model.to(env.device)
    else:  # fully_shard moves each rank's shard to its device; the full model never goes there
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 all-gathers and compute on GPU, fp32 gradient reduction; fp32 master shards.
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if env.device.type == "cuda" else MixedPrecisionPolicy()
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        # The loss is already divided by the global step's target tokens (see the loop), so the
        # ranks' gradients must be summed: FSDP's default divides by the world size once more.
        for module in (*model.model.layers, model):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    if mc.compile:
        for layer in model.model.layers:
            layer.compile()
    decay = [p for n, p in model.named_parameters() if not M.no_decay(n, p)]
    keep = [p for n, p in model.named_parameters() if M.no_decay(n, p)]
    embedding_params = {id(p) for n, p in model.named_parameters() if M.is_embedding(n)}
    # Fused AdamW (one kernel per step) exists for CUDA and, since torch 2.4, CPU fp32 params.
    fused = env.device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                   {"params": keep, "weight_decay": 0.0}],
                                  lr=tc.lr, betas=tc.betas, eps=1e-8, fused=fused)

    # ---- 3. resume ----------------------------------------------------------------------------
    step = 0
    if tc.resume and (found := list_checkpoints(ckpt_dir)):
        step = load_checkpoint(found[-1][1], model, optimizer, plan)
        if env.main:
            print(f"resuming from {found[-1][1]} (step {step})", file=sys.stderr)
    start_step = step
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        _trim_metrics(out / "metrics.jsonl", step)
    env.barrier()

    # ---- 4-5. steps and logging ---------------------------------------------------------------
    peak = M.peak_tflops(env.device)
    fpt = M.flops_per_token(sized, data.seq_len)
    metrics = open(out / "metrics.jsonl", "a") if env.main else None  # noqa: SIM115 - closed in finally
    tb = _tensorboard(out) if env.main else None
    bar = _progress(plan.steps, step, env.main and tc.progress)
    autocast = torch.autocast(env.device.type, dtype=torch.bfloat16)
    last_loss, t_log, tok_log = float("nan"), time.time(), 0
    meta = {"config_source": cfg.source_path, "vocab_rows_added": added}
    interrupted = False
    t_loop = time.time()
    try:
        while step < plan.steps:
            phase = plan.phase_at(step)
            lr = lr_at(step, plan.steps, tc.lr, tc.warmup_steps, tc.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro = plan.micro_batches(step, env.rank)
            # The loss of a step is the mean over all of its target tokens, on all ranks.
            targets = torch.tensor(float(sum(int((b.labels[:, 1:] != -100).sum()) for b in micro)),
                                   device=env.device)
            targets = env.all_sum(targets).clamp(min=1.0)
            loss_sum = torch.zeros((), device=env.device)
            for i, b in enumerate(micro):
                if defer_grad_sync:
                    model.set_requires_gradient_sync(i == len(micro) - 1)
                ids, labels = (x.to(env.device, non_blocking=True) for x in (b.input_ids, b.labels))
                with autocast:
                    logits = M.packed_forward(model, ids, b.position_ids, attention)
                loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                       labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
                (loss / targets).backward()
                loss_sum += loss.detach()
            if phase.train == "embeddings":
                # Only embeddings/lm_head learn in this phase; AdamW skips parameters without grads.
                for p in model.parameters():
                    if id(p) not in embedding_params:
                        p.grad = None
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                                       tc.grad_clip)
            if hasattr(grad_norm, "full_tensor"):
                grad_norm = grad_norm.full_tensor()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tok_log += plan.tokens_per_step
            last_loss = float(env.all_sum(loss_sum) / targets)
            if on_step is not None:
                on_step(step)
            if bar is not None:
                bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}", phase=phase.name, refresh=False)
                bar.update(1)

            if step % tc.log_every == 0 or step == plan.steps:
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                dt = max(time.time() - t_log, 1e-9)
                tps = tok_log / dt
                tflops = tps * fpt / env.world / 1e12
                row = {"step": step, "tokens": step * plan.tokens_per_step, "loss": round(last_loss, 6), "lr": lr,
                       "grad_norm": round(float(grad_norm), 6), "tokens_per_s": round(tps, 1),
                       "tflops": round(tflops, 4), "mfu": round(tflops / peak, 4) if peak else None,
                       "mem_gb": round(memory_gb(env.device), 3), "phase": phase.name}
                if metrics:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                if tb is not None:
                    for k in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops"):
                        tb.add_scalar(f"train/{k}", row[k], step)
                if env.main and bar is None:  # no bar (progress: false, or a log file): one line per log
                    eta = (plan.steps - step) * (time.time() - t_loop) / max(1, step - start_step)
                    print(f"step {step}/{plan.steps}  loss {last_loss:.4f}  lr {lr:.2e}  {tps:,.0f} tokens/s  "
                          f"phase {phase.name}  eta {eta / 60:.1f} min", file=sys.stderr, flush=True)
                t_log, tok_log = time.time(), 0

            # ---- 6. checkpoints ---------------------------------------------------------------
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < plan.steps:
                save_checkpoint(ckpt_dir, step, model, optimizer, plan, env, tc.keep_checkpoints, meta)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if bar is not None:
            bar.close()
        if metrics:
            metrics.close()
        if tb is not None:
            tb.close()
        # Ctrl-C in a single process: keep the finished steps so a rerun continues from here.
        if interrupted and env.world == 1 and step > 0 and not any(s == step for s, _ in list_checkpoints(ckpt_dir)):
            print(f"\nsaving a checkpoint at step {step} before stopping", file=sys.stderr)
            save_checkpoint(ckpt_dir, step, model, optimizer, plan, env, tc.keep_checkpoints, meta)

    if step != start_step or not any(s == step for s, _ in list_checkpoints(ckpt_dir)):
        save_checkpoint(ckpt_dir, step, model, optimizer, plan, env, tc.keep_checkpoints, meta)
    final = export_hf(model, hf_config, out / "final", tok_dir, mc.export_dtype, env)
    result = TrainResult(output_dir=out, final_dir=final, steps=step, tokens=step * plan.tokens_per_step,
                         final_loss=last_loss if not math.isnan(last_loss) else _last_logged_loss(out))
    if env.main:
        summary = {"config": cfg.resolved(), "attention": attention, "world_size": env.world, "fsdp": env.sharded,
                   "gradient_sync": "one rank" if env.world == 1 else
                   "last micro-batch" if defer_grad_sync else "every micro-batch",
                   "parameters": n_params, "flops_per_token": fpt, "vocab_rows_added": added, "steps": result.steps,
                   "tokens": result.tokens, "final_loss": result.final_loss, "wall_s": round(time.time() - t_start, 2),
                   "phases": [p.__dict__ for p in plan.phases], "final": str(final)}
        (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result


def _trim_metrics(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint; drop their old lines."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    path.write_text("".join(line + "\n" for line in kept))


def _last_logged_loss(out: Path) -> float:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return float(json.loads(lines[-1])["loss"]) if lines else float("nan")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

