"""Shared fixtures: the real text in ../shared/data (skipped cleanly when absent) and a small
local Ray for end-to-end tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The `../shared/data` folder of real test text; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (a fresh clone has no shared test text)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_local():
    """A small local Ray (2 CPUs, capped object store) shared by the session's tests.
    Workers inherit PYTHONPATH so they import this checkout and test-local operators."""
    import ray

    paths = [str(REPO), str(REPO / "tests")]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)
    if not ray.is_initialized():
        ray.init(num_cpus=2, object_store_memory=400 << 20, include_dashboard=False,
                 logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
    yield ray
    ray.shutdown()


def spark_unavailable() -> str | None:
    """Why the Spark engine cannot run here (no pyspark, no Java 17+), or None."""
    try:
        import pyspark  # noqa: F401

        from common.errors import KilnError
        from pipeline.engines.spark import check_java
    except ImportError:
        return "pyspark is not installed (make setup installs it)"
    try:
        check_java()
    except KilnError as e:
        return str(e)
    return None


@pytest.fixture(scope="session")
def spark_local():
    """A small local Spark (2 cores) shared by the session's tests: kiln runs with
    `engine="spark"` join it (SparkEngine.start finds the active session) instead of starting
    a JVM each. Its Python workers import this checkout and test-local operators."""
    reason = spark_unavailable()
    if reason:
        pytest.skip(reason)
    from pipeline.config import parse_config
    from pipeline.engines.spark import SparkEngine
    from pipeline.runner import RunRequest

    paths = [str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if p)
    config = parse_config({"run": {"name": "tests"}, "ray": {"num_cpus": 2}, "inputs": [{"path": str(REPO / "README.md")}],
                           "stages": [{"name": "s", "ops": [{"normalize": {}}]}]})
    engine = SparkEngine.start(config, RunRequest())
    yield engine.spark
    engine.spark.stop()


@pytest.fixture(params=["ray", pytest.param("spark", marks=pytest.mark.spark)])
def engine(request) -> str:
    """Runner-level tests that take this fixture run on both engines (pass it to run_config)."""
    return request.param


@pytest.fixture
def run_config(tmp_path, ray_local, request):
    """Run a pipeline config given as a dict in a fresh run folder; returns (stats, run_dir).
    `engine="spark"` runs it on the session's local Spark."""
    from pipeline.config import parse_config
    from pipeline.runner import RunRequest, run_pipeline

    def run(data: dict, **options):
        if options.get("engine") == "spark":
            request.getfixturevalue("spark_local")
        data = {**data, "run": {**data.get("run", {}), "output": str(tmp_path / "run")}}
        config = parse_config(data)
        stats = run_pipeline(config, RunRequest(progress=False, **options), echo=lambda _: None)
        return stats, tmp_path / "run"

    return run
