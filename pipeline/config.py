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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from operators import registry
from operators.base import Operator
from pipeline.errors import ConfigError

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
              "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def parse_size(value: int | str) -> int:
    """`2GB`, `512MiB`, `1e9` or an integer number of bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (use bytes or a unit such as 512MB, 2GB)")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class InputSpec(Strict):
    path: str
    format: Literal["auto", "jsonl", "txt", "parquet", "warc", "html"] = "auto"
    source: str | None = None
    text_field: str = "text"
    id_field: str | None = None
    url_field: str | None = "url"
    lang: str | None = Field(None, description="declared language of every document, if known")
    txt_mode: Literal["lines", "paragraphs", "file"] = "lines"
    on_decode_error: Literal["reject", "replace"] = "reject"
    encoding: str | None = Field(None, description="codec of the input's bytes (utf-8, gbk, gb18030, big5, "
                                 "shift_jis, ...) or `auto` (BOM, UTF-8, declared charset, detection); "
                                 "default utf-8, and auto for WARC and HTML")
    html_field: str | None = Field(None, description="jsonl/parquet: the field holding a page's HTML; "
                                   "it becomes the document text, for html_extract (instead of text_field)")
    max_doc_bytes: int = Field(16 << 20, description="larger documents are rejected as too_large")
    keep_meta: bool = Field(True, description="other fields travel as a JSON `meta` column")

    @field_validator("max_doc_bytes", mode="before")
    @classmethod
    def _size(cls, v: Any) -> Any:
        return parse_size(v)

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str | None) -> str | None:
        from pipeline.decoding import AUTO, codec_name

        if v is not None and v != AUTO and codec_name(v) is None:
            raise ValueError(f"unknown encoding {v!r}: use a Python codec name (utf-8, gbk, gb18030, big5, "
                             "shift_jis, windows-1252, ...) or auto")
        return v

    @model_validator(mode="after")
    def _lines_need_ascii_newlines(self) -> InputSpec:
        from pipeline.decoding import codec_name

        wide = (codec_name(self.encoding) or "").startswith(("utf-16", "utf-32"))
        if wide and self.format in ("auto", "jsonl", "txt") and self.txt_mode != "file":
            raise ValueError(f"encoding {self.encoding}: such files cannot be split into lines; "
                             "read them whole with format: txt, txt_mode: file")
        return self


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


def format_path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error_message(prefix: Sequence[str | int], error: dict[str, Any], model: type[BaseModel] | None) -> str:
    loc = [*prefix, *error["loc"]]
    path = format_path(loc)
    if error["type"] == "extra_forbidden":
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(str(error["loc"][-1]), list(_fields_at(model, error["loc"][:-1])), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        known = ", ".join(_fields_at(model, error["loc"][:-1])) if model is not None else ""
        return f"{path}: unknown key{hint}" + (f"; known keys: {known}" if known and not hint else "")
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message} (got {error.get('input')!r})" if "input" in error else f"{path}: {message}"


def _fields_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        elif inner:
            model = inner[0]
        else:
            return []
    return list(model.model_fields)


def validate_model(model: type[BaseModel], data: Any, prefix: Sequence[str | int]) -> BaseModel:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{format_path(prefix) or 'config'}: expected a mapping, got {type(data).__name__}")
    try:
        return model(**data)
    except ValidationError as e:
        messages = [_error_message(prefix, err, model) for err in e.errors()]
        raise ConfigError("; ".join(messages)) from None


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


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML file's data, or a ConfigError naming the file (missing, or not valid YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def load_config(path: str | os.PathLike) -> PipelineConfig:
    return parse_config(read_yaml(path), str(path))
