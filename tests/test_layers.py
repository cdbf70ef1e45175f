"""The layers point down: pipeline/ may use operators/, trainer/ and common/; operators/ may use
trainer/ (its shard format and model loading) and common/; trainer/ only common/; common/
nothing of kiln. Checked on every import statement, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {
    "common": {"common"},
    "trainer": {"common", "trainer"},
    "operators": {"common", "trainer", "operators"},
    "pipeline": {"common", "trainer", "operators", "pipeline"},
}


def kiln_imports(path: Path) -> set[tuple[str, int]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return {(name, line) for name, line in found if name in ALLOWED}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in sorted((REPO / layer).rglob("*.py"))
             for name, line in sorted(kiln_imports(path)) if name not in ALLOWED[layer]]
    assert not wrong, "\n".join(wrong)
