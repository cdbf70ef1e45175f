"""Typed configuration from YAML, with errors a person can act on: each problem is reported
with the YAML path of the offending key (`stages[1].ops[0].minhash.thresold: unknown key (did
you mean threshold?)`) as a `ConfigError`, printed by the CLI as one line.

Shared by every config kiln reads (pipeline, training, ablation), so it lives below
pipeline/, operators/ and trainer/, which all import it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import ConfigError

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


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """A YAML file's data, or a ConfigError naming the file (missing, or not valid YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
