"""Operators registered by name, so YAML `ops:` lists can name them.

Every module in the `operators` package is imported on first lookup, so adding an operator
family is adding a file: no central list to edit.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, TypeVar

from operators.base import Operator

_REGISTRY: dict[str, type[Operator]] = {}
_discovered = False

T = TypeVar("T", bound=type[Operator])


def register(cls: T) -> T:
    """Class decorator: make an operator available by its `name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"operator name {cls.name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import operators

    for module in pkgutil.iter_modules(operators.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"operators.{module.name}")
    _discovered = True


def available() -> dict[str, type[Operator]]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


class UnknownOperator(KeyError):
    def __init__(self, name: str) -> None:
        close = difflib.get_close_matches(name, available(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        super().__init__(f"unknown operator {name!r}{hint}")
        self.message = f"unknown operator {name!r}{hint}"

    def __str__(self) -> str:
        return self.message


def get(name: str) -> type[Operator]:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownOperator(name) from None


def create(name: str, params: dict[str, Any] | None = None) -> Operator:
    return get(name)(params or {})
