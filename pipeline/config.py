"""Pipeline configuration: YAML in, typed and validated objects out.

Every problem is reported with the YAML path of the offending key, for example
`stages[1].ops[0].minhash.thresold: unknown key (did you mean threshold?)`, and raised as
`ConfigError` so the CLI prints one line instead of a traceback. Operator parameters are
validated against each operator's own `Params` model at load time, before Ray starts.

Shape of a config:

    run:    {name: demo, output: runs/demo}
    ray:    {num_cpus: 2, object_store_memory: 1GB, batch_size: 1024}
    inputs: [{path: data/demo/raw/web.jsonl.gz, source: web}, ...]
    stages:
      - name: clean
        ops:
          - normalize: {}
          - length_filter: {min_chars: 20}
          - op: perplexity            # long form: parameters and resources apart
            params: {model: ...}
            resources: {num_gpus: 1, concurrency: 2}
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.errors import ConfigError
from common.inputs import InputSpec
from common.yamlconf import Strict, format_path, parse_size, read_yaml, validate_model
from operators import registry
from operators.base import Operator


class RunOptions(Strict):
    name: str = "run"
    output: str = Field("", description="run folder; default runs/<name>")
    engine: Literal["ray", "spark"] = Field("ray", description="what runs the stages (`kiln run --engine` wins)")

    @field_validator("name")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v):
            raise ValueError("use letters, digits, '-', '_' and '.'")
        return v


class RayOptions(Strict):
    address: str | None = Field(None, description="existing cluster; None starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="local Ray CPUs; default all")
    object_store_memory: int | None = Field(None, description="local object store cap in bytes")
    batch_size: int = Field(1024, ge=1, description="rows per operator batch")
    preserve_order: bool = Field(True, description="deterministic block order (identical reruns)")
    global_memory: int = Field(2 << 30, ge=0, description="memory a global step (dedup clustering, quantiles) "
                                                          "may gather into one task; above it, the distributed form")

    @field_validator("object_store_memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)

    @field_validator("global_memory", mode="before")
    @classmethod
    def _budget(cls, v: Any) -> Any:
        return parse_size(v)


class Resources(Strict):
    num_cpus: float | None = None
    num_gpus: float | None = None
    memory: int | None = None
    concurrency: int | None = Field(None, ge=1, description="actor pool size for operators with setup()")
    batch_size: int | None = Field(None, ge=1)

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return None if v is None else parse_size(v)


class OpSpec(BaseModel):
    """One operator of a stage: its registered name, validated parameters and resources."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    params: dict[str, Any]
    resources: Resources
    where: str  # YAML path, for messages

    def build(self) -> Operator:
        return registry.get(self.name)(self.params)


class StageSpec(BaseModel):
    name: str
    ops: list[OpSpec]


class PipelineConfig(BaseModel):
    run: RunOptions
    ray: RayOptions
    inputs: list[InputSpec]
    stages: list[StageSpec]
    source_path: str | None = None  # the YAML file, for resolving relative paths
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> str:
        return self.run.output or os.path.join("runs", self.run.name)

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(f"no stage named {name!r}; stages are {', '.join(s.name for s in self.stages)}")

    def config_hash(self) -> str:
        """sha256 of the whole configuration (inputs, stages, run), for manifests."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    def stage_hash(self, index: int) -> str:
        """Hash of everything that determines a stage's output: the inputs and every stage up
        to and including this one. A finished stage whose hash changed is stale."""
        relevant = {"inputs": self.raw.get("inputs"), "stages": self.raw.get("stages", [])[: index + 1]}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- loading


def _parse_op(entry: Any, where: list[str | int]) -> OpSpec:
    path = format_path(where)
    if isinstance(entry, str):
        name, params, resources = entry, {}, {}
    elif isinstance(entry, dict) and "op" in entry:
        unknown = set(entry) - {"op", "params", "resources"}
        if unknown:
            raise ConfigError(f"{path}.{sorted(unknown)[0]}: unknown key; an operator entry in long form has op, params, resources")
        name, params, resources = entry["op"], entry.get("params") or {}, entry.get("resources") or {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params, resources = params or {}, {}
        if isinstance(params, dict) and "resources" in params:
            params = dict(params)
            resources = params.pop("resources") or {}
    else:
        raise ConfigError(f"{path}: an operator is `name: {{params}}` or `{{op: name, params: ..., resources: ...}}`")
    if not isinstance(name, str):
        raise ConfigError(f"{path}: operator name must be a string")
    try:
        op_class = registry.get(name)
    except registry.UnknownOperator as e:
        raise ConfigError(f"{path}: {e}") from None
    validated = validate_model(op_class.Params, params, [*where, name])
    res = validate_model(Resources, resources, [*where, name, "resources"])
    return OpSpec(name=name, params=validated.model_dump(), resources=res, where=f"{path}.{name}")


def parse_inputs(inputs_raw: Any) -> list[InputSpec]:
    if not isinstance(inputs_raw, list) or not inputs_raw:
        raise ConfigError("inputs: a non-empty list of inputs is required")
    inputs = []
    for i, item in enumerate(inputs_raw):
        if isinstance(item, str):
            item = {"path": item}
        inputs.append(validate_model(InputSpec, item, ["inputs", i]))
    return inputs


def parse_config(data: Any, source_path: str | None = None) -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError("config: the top level must be a mapping with run, inputs and stages")
    known = {"run", "ray", "inputs", "stages"}
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"{key}: unknown key" + (f" (did you mean {close[0]}?)" if close else f"; known keys: {', '.join(sorted(known))}"))
    run = validate_model(RunOptions, data.get("run"), ["run"])
    ray_options = validate_model(RayOptions, data.get("ray"), ["ray"])

    inputs = parse_inputs(data.get("inputs"))

    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError("stages: a non-empty list of stages is required")
    stages: list[StageSpec] = []
    seen: set[str] = set()
    for i, stage in enumerate(stages_raw):
        where: list[str | int] = ["stages", i]
        if not isinstance(stage, dict):
            raise ConfigError(f"{format_path(where)}: a stage is a mapping with name and ops")
        for key in stage:
            if key not in ("name", "ops"):
                raise ConfigError(f"{format_path([*where, key])}: unknown key; a stage has name and ops")
        name = stage.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            raise ConfigError(f"{format_path([*where, 'name'])}: a stage needs a name of lowercase letters, digits, - and _")
        if name in seen:
            raise ConfigError(f"{format_path([*where, 'name'])}: stage name {name!r} is used twice")
        seen.add(name)
        ops_raw = stage.get("ops")
        if not isinstance(ops_raw, list) or not ops_raw:
            raise ConfigError(f"{format_path([*where, 'ops'])}: a non-empty list of operators is required")
        ops = [_parse_op(op, [*where, "ops", j]) for j, op in enumerate(ops_raw)]
        stages.append(StageSpec(name=name, ops=ops))

    config = PipelineConfig(run=run, ray=ray_options, inputs=inputs, stages=stages,
                            source_path=source_path, raw=data)
    return config


def load_config(path: str | os.PathLike) -> PipelineConfig:
    return parse_config(read_yaml(path), str(path))
