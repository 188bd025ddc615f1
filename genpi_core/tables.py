"""Validated Parquet I/O: every table is checked against its pandera schema on write and on read.

A failing read names the file and the failing columns/checks; a failing write raises before
anything lands on disk. ``partition_valid`` splits generated rows into usable ones and quarantine
rows (with the reason) so invalid generations are never silently dropped.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.parquet as pq
from pandera.errors import SchemaError, SchemaErrors

from genpi_core.store import atomic_write_bytes
from schemas.datasets import QuarantineSchema


class TableError(ValueError):
    """A table failed its schema; the message names the file (or table) and what failed."""


def _summarize(errors: SchemaErrors | SchemaError) -> str:
    if isinstance(errors, SchemaErrors):
        cases = errors.failure_cases
        parts = [f"{row.column}: {row.check} (e.g. {row.failure_case!r})" for row in cases.head(5).itertuples()]
        more = len(cases) - 5
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    return str(errors).splitlines()[0]


def validate(df: pd.DataFrame, schema: type[pa.DataFrameModel], where: str) -> pd.DataFrame:
    try:
        return schema.validate(df, lazy=True)
    except (SchemaErrors, SchemaError) as exc:
        raise TableError(f"{where} does not match {schema.__name__}: {_summarize(exc)}") from exc


def write_table(df: pd.DataFrame, schema: type[pa.DataFrameModel], path: Path) -> int:
    """Validate, then write Parquet atomically. Returns the row count."""
    df = validate(df.reset_index(drop=True), schema, str(path))
    buffer = io.BytesIO()
    pq.write_table(pa_arrow.Table.from_pandas(df, preserve_index=False), buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return len(df)


def read_table(path: Path, schema: type[pa.DataFrameModel]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: table is missing")
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as exc:  # truncated/corrupt files raise assorted arrow errors
        raise TableError(f"{path}: unreadable Parquet file: {exc}") from exc
    return validate(df, schema, str(path))


def quarantine_rows(table: str, rows: pd.DataFrame, key_column: str, error: str | pd.Series) -> pd.DataFrame:
    """Build quarantine rows for ``rows`` with one shared reason or one per row."""
    errors = error if isinstance(error, pd.Series) else pd.Series([error] * len(rows), index=rows.index)
    return pd.DataFrame(
        {
            "table": table,
            "row_key": rows[key_column].astype(str).to_numpy(),
            "error": errors.astype(str).to_numpy(),
            "raw": [json.dumps(r, default=str, ensure_ascii=False) for r in rows.to_dict(orient="records")],
        }
    )


def partition_valid(
    df: pd.DataFrame, schema: type[pa.DataFrameModel], table: str, key_column: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows that pass ``schema`` and quarantine rows for those that don't (reason = failed checks)."""
    df = df.reset_index(drop=True)
    try:
        return schema.validate(df, lazy=True), empty_quarantine()
    except SchemaErrors as exc:
        cases = exc.failure_cases
        row_cases = cases[cases["index"].notna()]
        if len(row_cases) < len(cases):  # a column-level failure (missing column, wrong dtype): a bug, not bad data
            raise TableError(f"{table}: {_summarize(exc)}") from exc
        reasons: dict[int, list[str]] = {}
        for case in row_cases.itertuples():
            reasons.setdefault(int(case.index), []).append(f"{case.column}: {case.check}")
    bad_index = sorted(reasons)
    bad = df.loc[bad_index]
    quarantine = quarantine_rows(table, bad, key_column, pd.Series(["; ".join(reasons[i]) for i in bad_index], index=bad.index))
    good = schema.validate(df.drop(index=bad_index), lazy=True)
    return good, quarantine


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in QuarantineSchema.to_schema().columns})
