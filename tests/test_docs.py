"""The README stays true to the Makefile: every make target with a help line is in its table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_targets_table() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Make targets")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def _documented_make_targets() -> list[str]:
    targets = []
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([a-zA-Z0-9_-]+):.*## ", line)
        if match and match.group(1) != "help":
            targets.append(match.group(1))
    return targets


def test_every_make_target_with_help_is_in_the_readme_table():
    table = _readme_targets_table()
    targets = _documented_make_targets()
    assert len(targets) > 10
    missing = [t for t in targets if not re.search(rf"`(make )?{re.escape(t)}( [^`]*)?`", table)]
    assert not missing, f"make targets missing from README's 'Make targets' table: {missing}"


def test_the_readme_names_the_two_set_up_commands_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^make demo\b", readme, re.M) and re.search(r"^make test\b", readme, re.M)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M)


def test_every_shipped_config_parses():
    """A shipped config with a typo would only fail when a user runs it."""
    from pipeline.ablate import load_ablate_config
    from pipeline.config import load_config
    from trainer.config import load_train_config

    loaders = {"pipeline": load_config, "train": load_train_config, "ablate": load_ablate_config}
    checked = 0
    for folder, load in loaders.items():
        for path in sorted((ROOT / "configs" / folder).glob("*.yaml")):
            load(path)
            checked += 1
    assert checked >= 10
