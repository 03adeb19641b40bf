"""Rows of a data file or folder on disk, each with where it came from, for errors that name it.

    *.parquet                 a Parquet file                       rows "data.parquet: row 17"
    *.arrow                   an Arrow file (as `save_to_disk` writes them)
    *.csv                     a CSV file with a header row            rows "data.csv:18" (the line; XSTest ships one)
    a folder                  a `datasets` `save_to_disk` folder: one Dataset, or a DatasetDict (needs `split`)
    anything else             JSONL, possibly gzip-compressed      rows "data.jsonl:18" (the line)

Parquet, Arrow and folders are read through the Hugging Face `datasets` library, imported only for them; row
numbers count from 0, as `dataset[17]` does. Nothing here ever looks a name up on the Hub: a path that does
not exist is an error. Arrow fills a column a row lacks with null, so null columns are dropped from each row
(a JSON null and a missing key mean the same to every format here).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from tether.data.jsonl import read_rows
from tether.errors import DataError

__all__ = ["Row", "read_source"]

ARROW_SUFFIXES = (".parquet", ".arrow")


@dataclass
class Row:
    """One row of a source."""

    where: str
    """Its place for error messages: "file:LINE" (JSONL) or "file: row N" (datasets, N from 0)."""
    at: dict
    """Its place as provenance: {"line": LINE} or {"row": N}."""
    data: dict
    """The row's fields."""


def read_source(path: str | Path, split: str | None = None) -> list[Row]:
    """Every row of the JSONL file, Parquet/Arrow file or `save_to_disk` folder at `path`, in order.

    `split` picks a split of a DatasetDict folder, and is an error anywhere else (a file has no splits).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found")
    if p.suffix == ".csv" and p.is_file():
        if split is not None:
            raise DataError(f"{path}: split={split} given, but a CSV file has no splits")
        return read_csv(p)
    if not p.is_dir() and p.suffix not in ARROW_SUFFIXES:
        if split is not None:
            raise DataError(f"{path}: split={split} given, but a JSONL file has no splits "
                            "(split= picks one of a save_to_disk DatasetDict folder)")
        rows, _ = read_rows(p, lambda row, lineno: Row(f"{path}:{lineno}", {"line": lineno}, row))
        return rows
    dataset, name = _dataset(p, split)
    if len(dataset) == 0:
        raise DataError(f"{name}: no rows")
    return [Row(f"{name}: row {i}", {"row": i}, {k: v for k, v in row.items() if v is not None})
            for i, row in enumerate(dataset)]


def read_csv(p: Path) -> list[Row]:
    """Rows of a CSV file, its first line the column names; empty cells are left out (as null columns are)."""
    try:
        text = p.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of the first name
    except UnicodeDecodeError as err:
        raise DataError(f"{p}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, line = [], 1
    try:
        for record in reader:
            if None in record:  # more cells than names
                raise DataError(f"{p}:{line + 1}: {len(reader.fieldnames) + len(record[None])} cells for "
                                f"{len(reader.fieldnames)} columns")
            rows.append(Row(f"{p}:{line + 1}", {"line": line + 1}, {k: v for k, v in record.items() if v}))
            line = reader.line_num
    except csv.Error as err:
        raise DataError(f"{p}:{reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        raise DataError(f"{p}: no rows under its header line")
    return rows


def _dataset(p: Path, split: str | None):
    """(the Dataset, its name in messages: the path, with [split] for a DatasetDict)."""
    import datasets  # ~1 s to import; JSONL readers never pay it
    import pyarrow  # a dependency of datasets
    import pyarrow.parquet

    if p.is_dir():
        return _from_disk(datasets, p, split)
    if split is not None:
        raise DataError(f"{p}: split={split} given, but a {p.suffix} file has no splits "
                        "(split= picks one of a save_to_disk DatasetDict folder)")
    try:
        if p.suffix == ".parquet":
            # an in-memory table: Dataset.from_parquet would first copy the file into ~/.cache/huggingface
            return datasets.Dataset(pyarrow.parquet.read_table(p)), str(p)
        return datasets.Dataset.from_file(str(p)), str(p)
    except (pyarrow.ArrowException, OSError) as err:
        raise DataError(f"{p}: not a readable {p.suffix[1:]} file ({err})") from None


def _from_disk(datasets, p: Path, split: str | None):
    if (p / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(p))
        splits = ", ".join(dd)
        if split is None:
            raise DataError(f"{p}: a DatasetDict folder; set split= to one of: {splits}")
        if split not in dd:
            raise DataError(f"{p}: no split {split!r}; set split= to one of: {splits}")
        return dd[split], f"{p}[{split}]"
    if not (p / "state.json").is_file():
        raise DataError(f"{p}: a folder, but not one `save_to_disk` wrote (no dataset_dict.json or state.json)")
    if split is not None:
        raise DataError(f"{p}: split={split} given, but the folder holds one Dataset, without splits")
    return datasets.load_from_disk(str(p)), str(p)
