"""Config validation: every error names the YAML path of the offending key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.errors import ConfigError
from common.yamlconf import parse_size
from pipeline.config import load_config, parse_config


def config(**overrides):
    data = {
        "run": {"name": "t"},
        "inputs": [{"path": "x.jsonl"}],
        "stages": [{"name": "clean", "ops": [{"normalize": {}}]},
                   {"name": "filter", "ops": [{"length_filter": {"min_chars": 5}}]}],
    }
    data.update(overrides)
    return data


def test_a_valid_config_parses_with_typed_params():
    cfg = parse_config(config())
    assert [s.name for s in cfg.stages] == ["clean", "filter"]
    assert cfg.stages[1].ops[0].params == {"min_chars": 5, "max_chars": None}
    assert cfg.run_dir.endswith("runs/t")


def test_unknown_operator_key_names_the_yaml_path_and_suggests():
    data = config(stages=[{"name": "a", "ops": [{"normalize": {}}]},
                          {"name": "b", "ops": [{"length_filter": {"min_char": 5}}]}])
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    assert str(e.value) == "stages[1].ops[0].length_filter.min_char: unknown key (did you mean min_chars?)"


def test_unknown_operator_names_path_and_suggestion():
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops\[1\]: unknown operator 'normalise' \(did you mean normalize"):
        parse_config(config(stages=[{"name": "a", "ops": [{"normalize": {}}, {"normalise": {}}]}]))


def test_wrong_type_and_invalid_values_name_the_path():
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops\[0\]\.length_filter\.min_chars: .*integer"):
        parse_config(config(stages=[{"name": "a", "ops": [{"length_filter": {"min_chars": "many"}}]}]))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops\[0\]\.length_filter: .*below min_chars"):
        parse_config(config(stages=[{"name": "a", "ops": [{"length_filter": {"min_chars": 9, "max_chars": 2}}]}]))


def test_top_level_input_ray_and_stage_errors():
    with pytest.raises(ConfigError, match=r"^stagse: unknown key \(did you mean stages\?\)"):
        parse_config({**config(), "stagse": []})
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.txt_mod: unknown key \(did you mean txt_mode\?\)"):
        parse_config(config(inputs=[{"path": "a.txt", "txt_mod": "lines"}]))
    with pytest.raises(ConfigError, match=r"ray\.object_store_memory: .*not a size"):
        parse_config(config(ray={"object_store_memory": "lots"}))
    with pytest.raises(ConfigError, match=r"stages\[1\]\.name: stage name 'a' is used twice"):
        parse_config(config(stages=[{"name": "a", "ops": ["normalize"]}, {"name": "a", "ops": ["normalize"]}]))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops: a non-empty list"):
        parse_config(config(stages=[{"name": "a", "ops": []}]))
    with pytest.raises(ConfigError, match=r"inputs: a non-empty list"):
        parse_config(config(inputs=[]))


def test_long_form_with_resources():
    good = parse_config(config(stages=[{"name": "a", "ops": [
        {"op": "length_filter", "params": {"min_chars": 3}, "resources": {"num_cpus": 0.5, "concurrency": 2}}]}]))
    op = good.stages[0].ops[0]
    assert op.params["min_chars"] == 3 and op.resources.concurrency == 2
    with pytest.raises(ConfigError, match=r"stages\[0\]\.ops\[0\]\.normalize\.resources\.num_gpu: unknown key \(did you mean num_gpus\?\)"):
        parse_config(config(stages=[{"name": "a", "ops": [{"op": "normalize", "resources": {"num_gpu": 1}}]}]))


def test_stage_hash_changes_only_for_the_changed_stage_and_later():
    a = parse_config(config())
    b = parse_config(config(stages=[{"name": "clean", "ops": [{"normalize": {}}]},
                                    {"name": "filter", "ops": [{"length_filter": {"min_chars": 6}}]}]))
    assert a.stage_hash(0) == b.stage_hash(0)
    assert a.stage_hash(1) != b.stage_hash(1)


def test_sizes():
    assert parse_size("2GB") == 2 << 30 and parse_size("512MiB") == 512 << 20 and parse_size(1000) == 1000


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_prints_config_errors_as_one_line_without_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {name: t}\ninputs: [{path: x.jsonl}]\nstages:\n  - name: a\n    ops:\n"
                    "      - length_filter: {min_char: 5}\n")
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "kiln run: error: stages[0].ops[0].length_filter.min_char: unknown key (did you mean min_chars?)"
    assert "Traceback" not in result.stderr
