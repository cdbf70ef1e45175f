"""Run-folder layout and file operations, in one place.

A run folder holds one folder per stage, `NN-<stage>/`, with `data/*.parquet` (kept rows),
`rejected/*.parquet` (rejected rows with `reject_op`/`reject_reason`/`reject_detail`),
`stats.json` and `_SUCCESS`. A stage is written into `.tmp-NN-<stage>-<id>/` and renamed into
place only once complete, so a half-written stage is never taken as finished.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SUCCESS = "_SUCCESS"
STATS = "stats.json"
DATA = "data"
REJECTED = "rejected"
TMP_PREFIX = ".tmp-"


def stage_folder_name(index: int, name: str) -> str:
    return f"{index + 1:02d}-{name}"


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def is_finished(stage_dir: str | os.PathLike) -> bool:
    return (Path(stage_dir) / SUCCESS).exists() and (Path(stage_dir) / STATS).exists()


def parquet_files(folder: str | os.PathLike) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("*.parquet"))


def unified_schema(files: list[str]) -> pa.Schema | None:
    """One schema for files whose columns differ (a statistic column absent from a file whose
    rows were all rejected before it was computed)."""
    if not files:
        return None
    return pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")


def read_table(folder: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """All parquet files of a folder as one table (columns missing in a file are null)."""
    files = parquet_files(folder)
    schema = unified_schema(files)
    if schema is None:
        return pa.table({c: pa.array([], pa.string()) for c in (columns or ["id"])})
    tables = []
    for f in files:
        table = pq.read_table(f, columns=[c for c in (columns or schema.names) if c in pq.read_schema(f).names])
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive")
    if columns:
        for c in columns:
            if c not in table.column_names:
                table = table.append_column(c, pa.nulls(table.num_rows, schema.field(c).type if c in schema.names else pa.string()))
        table = table.select(columns)
    return table


def count_rows(folder: str | os.PathLike) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(folder))


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def remove_tree(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def clean_stale_tmp(run_dir: str | os.PathLike) -> list[str]:
    """Remove temporary folders left by interrupted stages; returns what was removed."""
    run_dir = Path(run_dir)
    removed = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith(TMP_PREFIX) and child.is_dir():
                remove_tree(child)
                removed.append(child.name)
    return removed


def publish(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """Move a completed stage into place, replacing an older copy."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(TMP_PREFIX + "old-" + final_dir.name)
        remove_tree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        remove_tree(old)
    else:
        os.replace(tmp_dir, final_dir)


def link(target: str | os.PathLike, link_path: str | os.PathLike) -> None:
    """Point `link_path` at `target` (relative symlink), replacing an older link."""
    target, link_path = Path(target), Path(link_path)
    tmp = link_path.with_name(f".{link_path.name}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link_path.parent), tmp)
    os.replace(tmp, link_path)
