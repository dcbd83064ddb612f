"""Where a list of ids comes from for the fetch and deletion operators: a list, a file, or a query.

Files and query results go through the same extraction as the diff (``sync/sources.py``: chunked, typed,
any ObjectStoragePath URI) and are then read back one chunk at a time, so a list of millions of ids never
sits in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from airflow_provider_zeotap.errors import ConfigurationError
from airflow_provider_zeotap.sync.storage import SyncStorage, is_local, local_path

CHUNK = 10_000


def check_one_source(task_id: str, *, given: dict[str, Any], sql: Any, conn_id: Any) -> None:
    """Exactly one of the named sources, and ``sql`` only with ``conn_id``; checked when the DAG is parsed."""
    named = [name for name, value in given.items() if value is not None]
    if len(named) != 1:
        raise ConfigurationError(
            f"{task_id}: give exactly one source of ids: {', '.join(given)}; got {named or 'none'}."
        )
    if sql is not None and not conn_id:
        raise ConfigurationError(f"{task_id}: sql needs conn_id (an Airflow SQL connection).")


def id_chunks(
    *,
    ids: Sequence[Any] | None = None,
    source_uri: str | None = None,
    source_format: str | None = None,
    sql: str | None = None,
    sql_hook: Any = None,
    parameters: Any = None,
    id_column: str | None = None,
    id_type: str,
    work_dir: str,
    storage: SyncStorage,
) -> Iterator[list[Any]]:
    """The ids, in chunks of up to ``CHUNK``, in source order."""
    from airflow_provider_zeotap.sync.sources import file_to_parts, sql_to_parts

    if ids is not None:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise ConfigurationError(f"ids must be a list of ids, got {type(ids).__name__}: {str(ids)[:80]!r}.")
        for start in range(0, len(ids), CHUNK):
            yield list(ids[start : start + CHUNK])
        return
    os.makedirs(work_dir, exist_ok=True)
    if sql is not None:
        try:
            parts = sql_to_parts(sql_hook, sql, work_dir, chunk_size=CHUNK, parameters=parameters)
        except ValueError as error:  # a query the database refused: the provider's error, as in the diff task
            raise ConfigurationError(str(error)) from None
    else:
        uri = str(source_uri)
        path = local_path(uri) if is_local(uri) else storage.fetch(uri)
        if not os.path.exists(path):
            raise ConfigurationError(f"source_uri {uri!r} does not exist.")
        parts = file_to_parts(path, work_dir, format=source_format)
    yield from _column_chunks(parts, id_column, id_type)


def _column_chunks(parts: list[str], id_column: str | None, id_type: str) -> Iterator[list[Any]]:
    import pyarrow.parquet as pq

    for part in parts:
        handle = pq.ParquetFile(part)
        column = _pick_column(handle.schema_arrow.names, id_column, id_type)
        for batch in handle.iter_batches(batch_size=CHUNK, columns=[column]):
            yield batch.column(0).to_pylist()


def _pick_column(names: list[str], id_column: str | None, id_type: str) -> str:
    """``id_column``; else the column named like the id type; else the only column."""
    if id_column is not None:
        if id_column not in names:
            raise ConfigurationError(f"id_column {id_column!r} is not in the source; its columns are {names}.")
        return id_column
    if id_type in names:
        return id_type
    if len(names) == 1:
        return names[0]
    raise ConfigurationError(
        f"The source has columns {names} and none is named {id_type!r}: pass id_column=<the column holding the ids>."
    )
