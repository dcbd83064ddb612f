"""Writing small Parquet files for tests of the diff and commit engine."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write(path: Path, columns: dict[str, list], types: dict[str, pa.DataType] | None = None) -> str:
    """One Parquet file from columns, with explicit Arrow types where given."""
    types = types or {}
    arrays = [pa.array(values, type=types.get(name)) for name, values in columns.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, names=list(columns)), path)
    return str(path)
