"""Training configuration: one YAML file, validated into typed objects before any work starts.

Every problem names its YAML path (`train.lr: ...`, `data.phases[1].mix: ...`) and is raised as
`ConfigError`, so `kiln train` prints one line. `--set dotted.key=value` overrides are applied
to the raw YAML before validation, so they are checked exactly like the file.

Shape (the contract with `kiln eval`, see README "Training"):

    output: runs/train/tiny
    model:  {config: {hidden_size: 128, ...}}      # or {checkpoint: path/to/hf_folder}
    data:   {shards: runs/demo/shards, order: curriculum}
    train:  {seed: 0, micro_batch_size: 8, max_steps: 200, lr: 3.0e-3, ...}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from common.errors import ConfigError
from common.yamlconf import Strict, format_path, read_yaml, validate_model


class ModelOptions(Strict):
    checkpoint: str | None = Field(None, description="local HF LLaMA folder (continual pretraining)")
    config: dict[str, Any] | None = Field(None, description="LlamaConfig kwargs (from scratch)")
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash_attention_2 with flash-attn and a CUDA GPU, else sdpa")
    activation_checkpointing: bool = False
    compile: bool = Field(False, description="torch.compile each decoder layer")
    export_dtype: Literal["bfloat16", "float32"] = "bfloat16"

    @model_validator(mode="after")
    def _one_source(self) -> ModelOptions:
        if (self.checkpoint is None) == (self.config is None):
            raise ValueError("give exactly one of model.checkpoint (a local HF folder) or model.config")
        if self.config is not None and "vocab_size" in self.config:
            raise ValueError("model.config.vocab_size comes from the shards' tokenizer; remove it")
        return self


class Phase(Strict):
    """One stage of a multi-stage run (Ziya2 style): what data, in what mix, for how many tokens."""

    name: str
    max_tokens: int = Field(gt=0, description="token budget of this phase")
    buckets: list[int] | None = Field(None, description="curriculum buckets to draw from; default all")
    sources: list[str] | None = Field(None, description="corpus sources to draw from; default all")
    mix: dict[str, float] | None = Field(
        None, description="sampling ratios by bucket id ('0', '1') or source name; default: data.order")
    train: Literal["all", "embeddings"] = Field("all", description="embeddings: only embeddings/lm_head learn")

    @model_validator(mode="after")
    def _mix(self) -> Phase:
        if self.mix is not None and (not self.mix or any(v <= 0 for v in self.mix.values())):
            raise ValueError("mix ratios must be positive")
        return self


class DataOptions(Strict):
    shards: str
    order: Literal["curriculum", "shuffle"] = "curriculum"
    phases: list[Phase] = Field(default_factory=list)
    check_hashes: bool = Field(True, description="verify shard sha256 against the manifest at start")


class TrainOptions(Strict):
    seed: int = 0
    micro_batch_size: int = Field(8, ge=1)
    grad_accum_steps: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    lr: float = Field(3.0e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(0, ge=0, description="0: only at the end")
    keep_checkpoints: int = Field(2, ge=1)
    resume: bool = Field(True, description="continue from the newest checkpoint in output/checkpoints")
    progress: bool = True


class TrainConfig(Strict):
    output: str
    model: ModelOptions
    data: DataOptions
    train: TrainOptions = Field(default_factory=TrainOptions)
    source_path: str | None = None

    @model_validator(mode="after")
    def _length(self) -> TrainConfig:
        if self.train.max_steps is None and self.train.max_tokens is None and not self.data.phases:
            raise ValueError("set train.max_steps or train.max_tokens (or data.phases with max_tokens)")
        return self

    @property
    def output_dir(self) -> Path:
        return Path(self.output)

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"source_path"})


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`a.b.c=value` with value parsed as YAML (numbers, booleans, lists)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: use dotted.key=value")
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {format_path(parts[:i + 1])} is not a mapping")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    return data


def parse_train_config(data: Any, overrides: Sequence[str] = (), source_path: str | None = None) -> TrainConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("config: the top level must be a mapping with output, model, data, train")
    data = apply_overrides(dict(data), overrides)
    data.pop("source_path", None)
    cfg = validate_model(TrainConfig, data, [])
    assert isinstance(cfg, TrainConfig)
    cfg.source_path = source_path
    return cfg


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
    return parse_train_config(read_yaml(path), overrides, str(path))
