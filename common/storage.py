"""Run-folder layout and file operations, in one place.

A run folder holds one folder per stage, `NN-<stage>/`, with `data/*.parquet` (kept rows),
`rejected/*.parquet` (rejected rows with `reject_op`/`reject_reason`/`reject_detail`),
`stats.json` and `_SUCCESS`. A stage is written into `.tmp-NN-<stage>-<id>/` and renamed into
place only once complete, so a half-written stage is never taken as finished.

A run folder may also be a filesystem URI that pyarrow understands (s3://, gs://, hdfs://,
file://), so that every node of a cluster writes to the same place. Such a folder is a
`Location` (the part of pathlib's API the runner uses, over a `pyarrow.fs.FileSystem`); local
paths stay `pathlib.Path` and behave exactly as before. Object stores cannot rename a folder
(a "rename" is a copy and a delete), so a URI stage is published by copying its files into
place and writing `_SUCCESS` last: `_SUCCESS` is the commit marker, and a copy cut short
leaves a stage without it, which a rerun does again. An older copy of the stage loses its
`_SUCCESS` before anything of it is replaced.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SUCCESS = "_SUCCESS"
STATS = "stats.json"
DATA = "data"
REJECTED = "rejected"
TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------- URIs


def is_uri(path: Any) -> bool:
    return isinstance(path, Location) or "://" in str(path)


@functools.lru_cache(maxsize=4096)
def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a URI; cached, since S3/GCS clients are costly to make."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        from common.errors import KilnError

        raise KilnError(f"{uri}: not a filesystem URI pyarrow can open ({e})") from None


class Location:
    """A file or folder behind a URI, with the pathlib.Path methods the runner needs.

    `str()` gives the URI back (what Ray Data and `resolve_uri` take); it pickles as its URI,
    so Ray workers rebuild their own filesystem client."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/") if not uri.endswith("://") else uri
        self.fs, self.path = resolve_uri(self.uri)
        self.path = self.path.rstrip("/") or "/"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Location, (self.uri,))

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __truediv__(self, name: str | os.PathLike) -> Location:
        return Location(f"{self.uri}/{str(name).strip('/')}")

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.uri.rsplit("/", 1)[0])

    def with_name(self, name: str) -> Location:
        return self.parent / name

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def size(self) -> int:
        return int(self._info().size or 0)

    def mkdir(self, parents: bool = True, exist_ok: bool = True) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.fs.create_dir(self.parent.path, recursive=True)
        with self.fs.open_output_stream(self.path) as f:
            f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def rename(self, target: Location) -> Location:
        """Move a file (on object stores a copy and a delete)."""
        self.fs.move(self.path, target.path)
        return target

    def unlink(self, missing_ok: bool = False) -> None:
        if missing_ok and not self.exists():
            return
        self.fs.delete_file(self.path)

    def iterdir(self) -> Iterator[Location]:
        if not self.is_dir():
            return iter(())
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return iter(sorted(self / info.base_name for info in infos))

    def files(self) -> list[tuple[str, pafs.FileInfo]]:
        """Every file below this folder, as (relative path, info)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True))
        return sorted((info.path[len(self.path):].lstrip("/"), info) for info in infos
                      if info.type == pafs.FileType.File)

    def glob(self, pattern: str) -> Iterator[Location]:
        depth = pattern.count("/")
        return iter([self / rel for rel, _ in self.files()
                     if rel.count("/") == depth and fnmatch.fnmatch(rel, pattern)])

    def __lt__(self, other: Location) -> bool:
        return self.uri < other.uri


AnyPath = str | os.PathLike | Location


def location(path: AnyPath) -> Path | Location:
    """A local path as pathlib.Path, a URI as Location."""
    if isinstance(path, (Path, Location)):
        return path
    return Location(str(path)) if is_uri(path) else Path(path)


def _parquet_source(path: str) -> Any:
    """What pyarrow.parquet reads: the path itself, or an open file for a URI."""
    if is_uri(path):
        fs, inner = resolve_uri(str(path))
        return fs.open_input_file(inner)
    return path


def parquet_file(path: str) -> pq.ParquetFile:
    return pq.ParquetFile(_parquet_source(path))


def file_size(path: str) -> int:
    if is_uri(path):
        fs, inner = resolve_uri(str(path))
        return int(fs.get_file_info(inner).size or 0)
    return os.path.getsize(path)


# --------------------------------------------------------------------------- run folders


def stage_folder_name(index: int, name: str) -> str:
    return f"{index + 1:02d}-{name}"


def write_json(path: AnyPath, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename; one object PUT for a URI)."""
    path = location(path)
    if isinstance(path, Location):
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: AnyPath) -> Any:
    return json.loads(location(path).read_text())


def is_finished(stage_dir: AnyPath) -> bool:
    stage_dir = location(stage_dir)
    return (stage_dir / SUCCESS).exists() and (stage_dir / STATS).exists()


def parquet_files(folder: AnyPath) -> list[str]:
    """The folder's parquet files (local paths or URIs), without hidden in-progress ones."""
    folder = location(folder)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.glob("*.parquet") if not p.name.startswith("."))


def unified_schema(files: list[str]) -> pa.Schema | None:
    """One schema for files whose columns differ (a statistic column absent from a file whose
    rows were all rejected before it was computed)."""
    if not files:
        return None
    return pa.unify_schemas([parquet_file(f).schema_arrow for f in files], promote_options="permissive")


def read_table(folder: AnyPath, columns: list[str] | None = None) -> pa.Table:
    """All parquet files of a folder as one table (columns missing in a file are null)."""
    files = parquet_files(folder)
    schema = unified_schema(files)
    if schema is None:
        return pa.table({c: pa.array([], pa.string()) for c in (columns or ["id"])})
    tables = []
    for f in files:
        source = parquet_file(f)
        names = source.schema_arrow.names
        tables.append(source.read(columns=[c for c in (columns or schema.names) if c in names]))
    table = pa.concat_tables(tables, promote_options="permissive")
    if columns:
        for c in columns:
            if c not in table.column_names:
                table = table.append_column(c, pa.nulls(table.num_rows, schema.field(c).type if c in schema.names else pa.string()))
        table = table.select(columns)
    return table


def count_rows(folder: AnyPath) -> int:
    return sum(parquet_file(f).metadata.num_rows for f in parquet_files(folder))


def write_parquet_atomic(table: pa.Table, path: AnyPath) -> None:
    """Temporary file, then rename; for a URI one object write, which readers see whole or
    not at all on object stores (and a retried task overwrites its own file)."""
    path = location(path)
    if isinstance(path, Location):
        path.fs.create_dir(path.parent.path, recursive=True)
        pq.write_table(table, path.path, filesystem=path.fs, compression="zstd")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def remove_tree(path: AnyPath) -> None:
    path = location(path)
    if isinstance(path, Location):
        if path.is_dir():
            path.fs.delete_dir(path.path)
        elif path.exists():
            path.fs.delete_file(path.path)
        return
    shutil.rmtree(path, ignore_errors=True)


def clean_stale_tmp(run_dir: AnyPath) -> list[str]:
    """Remove temporary folders left by interrupted stages; returns what was removed."""
    run_dir = location(run_dir)
    removed = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith(TMP_PREFIX) and child.is_dir():
                remove_tree(child)
                removed.append(child.name)
    return removed


def publish(tmp_dir: AnyPath, final_dir: AnyPath) -> None:
    """Move a completed stage into place, replacing an older copy."""
    tmp_dir, final_dir = location(tmp_dir), location(final_dir)
    if isinstance(final_dir, Location) or isinstance(tmp_dir, Location):
        _publish_by_copy(location(str(tmp_dir)), location(str(final_dir)))
        return
    if final_dir.exists():
        old = final_dir.with_name(TMP_PREFIX + "old-" + final_dir.name)
        remove_tree(old)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        remove_tree(old)
    else:
        os.replace(tmp_dir, final_dir)


def _copy_file(fs: pafs.FileSystem, source: str, destination: str) -> None:
    fs.copy_file(source, destination)


def _publish_by_copy(tmp_dir: Location, final_dir: Location) -> None:
    """Publish where folders cannot be renamed: the old copy stops counting as finished
    (its _SUCCESS goes first), the new files are copied in, and `_SUCCESS` is written last."""
    fs = final_dir.fs
    (final_dir / SUCCESS).unlink(missing_ok=True)
    remove_tree(final_dir)
    fs.create_dir(final_dir.path, recursive=True)
    files = tmp_dir.files()
    for rel, info in files:
        if rel != SUCCESS:
            fs.create_dir((final_dir / rel).parent.path, recursive=True)
            _copy_file(fs, info.path, (final_dir / rel).path)
    for rel in (DATA, REJECTED):  # empty folders do not exist on object stores
        (final_dir / rel).mkdir()
    (final_dir / SUCCESS).write_bytes((tmp_dir / SUCCESS).read_bytes())
    remove_tree(tmp_dir)


def link(target: AnyPath, link_path: AnyPath) -> None:
    """Point `link_path` at `target` (relative symlink), replacing an older link. Object
    stores have no links: there the run's shards stay in their stage folder."""
    if is_uri(target) or is_uri(link_path):
        return
    target, link_path = Path(target), Path(link_path)
    tmp = link_path.with_name(f".{link_path.name}.link")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link_path.parent), tmp)
    os.replace(tmp, link_path)
