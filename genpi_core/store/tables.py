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

from genpi_core.store.stage import atomic_write_bytes
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
        table = pq.read_table(path)
    except Exception as exc:  # truncated/corrupt files raise assorted arrow errors
        raise TableError(f"{path}: unreadable Parquet file: {exc}") from exc
    _check_stored_types(table, schema, path)
    return validate(table.to_pandas(), schema, str(path))


_ARROW_KINDS = {
    "str": (pa_arrow.types.is_string, pa_arrow.types.is_large_string),
    "int": (pa_arrow.types.is_integer,),
    "float": (pa_arrow.types.is_floating,),
    "bool": (pa_arrow.types.is_boolean,),
}


def _check_stored_types(table: pa_arrow.Table, schema: type[pa.DataFrameModel], path: Path) -> None:
    """Refuse a column stored with another type than the one write_table stores: coercion on read would
    otherwise turn e.g. integers into strings and pass a foreign or hand-made table off as ours."""
    wrong = []
    for name, column in schema.to_schema().columns.items():
        if name not in table.column_names:
            continue  # missing columns are reported by the schema itself
        stored = table.schema.field(name).type
        dtype = str(column.dtype)
        boolean = dtype in ("bool", "boolean")  # "boolean": pandas' nullable bool
        kind = "str" if "str" in dtype else "bool" if boolean else "int" if "int" in dtype else "float"
        if pa_arrow.types.is_null(stored):  # only nulls (an empty table): nullability is the schema's to judge
            continue
        if not any(test(stored) for test in _ARROW_KINDS[kind]):
            wrong.append(f"{name}: stored as {stored}, expected {kind}")
    if wrong:
        raise TableError(f"{path} does not match {schema.__name__}: wrong column type ({'; '.join(wrong)})")


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
    quarantine = quarantine_rows(
        table, bad, key_column, pd.Series(["; ".join(reasons[i]) for i in bad_index], index=bad.index)
    )
    good = schema.validate(df.drop(index=bad_index), lazy=True)
    return good, quarantine


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=str) for c in QuarantineSchema.to_schema().columns})
