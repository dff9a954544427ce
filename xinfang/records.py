"""Loading petition records from JSONL, CSV and XLSX files into plain dicts.

Each record has `id` (str), `title` and `text` (str or None), every other column under its own
name, and `_row` (1-based data row; the line number for JSONL). Problems raise `DataError`
naming the file, the row and the column.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from xinfang.errors import DataError
from xinfang.fsutil import atomic_file

__all__ = ["AUTO_COLUMNS", "load_records", "parse_time", "read_text", "write_jsonl"]

log = logging.getLogger(__name__)

# File headers mapped to our field names when the caller gives no mapping for that field.
AUTO_COLUMNS: dict[str, str] = {
    "id": "留言编号",
    "title": "留言主题",
    "text": "留言详情",
    "petitioner": "留言用户",
    "time": "留言时间",
    "topic": "一级标签",
}

JSONL_EXTS = {".jsonl", ".jsonlines", ".ndjson", ".json"}
CSV_EXTS = {".csv", ".tsv"}
XLSX_EXTS = {".xlsx", ".xlsm"}
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y%m%d")


def read_text(path: str | Path) -> tuple[str, str]:
    """Decode a text file: UTF-8 (with or without BOM), else GB18030. Returns (text, encoding)."""
    path = Path(path)
    data = _read_bytes(path)
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[bom:].decode("utf-8"), "utf-8"
    except UnicodeDecodeError as err:
        utf8_err = UnicodeDecodeError(err.encoding, data, err.start + bom, err.end + bom, err.reason)
        if _looks_like_broken_utf8(data):
            raise DataError(
                f"{path}: invalid UTF-8 at byte {utf8_err.start} (line {_line_at(data, utf8_err.start)})"
            ) from None
        try:
            return data.decode("gb18030"), "gb18030"
        except UnicodeDecodeError as gb_err:
            raise DataError(
                f"{path}: cannot decode as UTF-8 (byte {utf8_err.start}, line {_line_at(data, utf8_err.start)}) "
                f"nor GB18030 (byte {gb_err.start}, line {_line_at(data, gb_err.start)})"
            ) from None


def parse_time(value: object) -> dt.datetime | None:
    """Parse the data's mixed time formats (`2019/2/28 11:25:05`, `2017-06-08 17:31:20`); None if unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value
    return _parse_time_str(str(value))


@lru_cache(maxsize=65536)
def _parse_time_str(value: str) -> dt.datetime | None:
    s = value.strip().replace("/", "-").replace("年", "-").replace("月", "-").replace("日", "")
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"(?<=\d{2}:\d{2}:\d{2})\.\d+$", "", s)
    for fmt in _TIME_FORMATS:
        try:
            return dt.datetime.strptime(s, fmt)
        except ValueError:
            continue
    return None


def load_records(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    require_text: bool = True,
    label_column: str | None = None,
) -> list[dict[str, Any]]:
    """Read petitions from .jsonl/.json, .csv/.tsv or .xlsx.

    `columns` maps our field names to the file's column names, e.g. {"text": "留言详情"}; fields it
    does not name are taken from `AUTO_COLUMNS` when that header is in the file. `label_column` is a
    record field (after mapping) that must be non-empty in every row. With `require_text`, a row
    without title and text is an error.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext in JSONL_EXTS:
        header, rows, encoding = _read_jsonl(path)
    elif ext in CSV_EXTS:
        header, rows, encoding = _read_csv(path, delimiter="\t" if ext == ".tsv" else ",")
    elif ext in XLSX_EXTS:
        header, rows, encoding = _read_xlsx(path)
    else:
        supported = ", ".join(sorted(JSONL_EXTS | CSV_EXTS | XLSX_EXTS))
        raise DataError(f"{path}: unknown file type '{ext or '(none)'}'; supported: {supported}")

    mapping = _resolve_mapping(path, header, columns)
    keys = {col: _field_name(col, mapping) for col in header}
    records = [_to_record(raw, row, keys) for row, raw in rows]
    fields = [f for f in keys.values() if f is not None]
    _check(path, records, mapping, fields, require_text, label_column)
    log.info("loaded %d records from %s (encoding %s)", len(records), path.name, encoding)
    return records


def read_jsonl(path: str | Path, line_key: str | None = None) -> list[dict[str, Any]]:
    """Plain JSON objects, one per non-blank line (pair files, stores); DataError naming file and line.

    With `line_key`, each object also gets its 1-based line number under that key."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}, line {n}: invalid JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise DataError(f"{path}, line {n}: expected a JSON object")
                if line_key:
                    row[line_key] = n
                rows.append(row)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return rows


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as UTF-8 JSON lines atomically (xinfang.fsutil.atomic_file)."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n")
    return Path(path)


# --- readers: each returns (header, [(row_number, {column: value})], encoding) ---

Rows = list[tuple[int, dict[str, Any]]]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot read file (permission denied)")


def _read_bytes(path: Path) -> bytes:
    _check_file(path)
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror or err})") from None


def _looks_like_broken_utf8(data: bytes) -> bool:
    """A UTF-8 file with a few bad bytes (not a GBK file): mostly valid multi-byte sequences."""
    decoded = data.decode("utf-8", errors="replace")
    bad = decoded.count("\ufffd")
    good = sum(1 for ch in decoded if ord(ch) > 0x7F and ch != "\ufffd")
    return good > 4 * bad


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_jsonl(path: Path) -> tuple[list[str], Rows, str]:
    text, encoding = read_text(path)
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        return _read_json_array(path, text, encoding)
    header: dict[str, None] = {}
    rows: Rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON on line {lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {lineno} is a JSON {type(obj).__name__}, not an object")
        header.update(dict.fromkeys(obj))
        rows.append((lineno, obj))
    return list(header), rows, encoding


def _read_json_array(path: Path, text: str, encoding: str) -> tuple[list[str], Rows, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON on line {err.lineno}, column {err.colno}: {err.msg}") from None
    header: dict[str, None] = {}
    rows: Rows = []
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: item {i} is a JSON {type(obj).__name__}, not an object")
        header.update(dict.fromkeys(obj))
        rows.append((i, obj))
    return list(header), rows, encoding


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], Rows, str]:
    text, encoding = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        first = next(reader, None)
        if first is None:
            raise DataError(f"{path}: empty file (no header row)")
        header = _clean_header(path, first)
        rows: Rows = []
        for n, values in enumerate(reader, start=1):
            if not any(v.strip() for v in values):
                continue
            if len(values) > len(header) and any(v.strip() for v in values[len(header):]):
                raise DataError(
                    f"{path}: row {n} (line {reader.line_num}) has {len(values)} values "
                    f"but the header has {len(header)} columns"
                )
            rows.append((n, {col: v for col, v in zip(header, values, strict=False) if col}))
    except csv.Error as err:
        raise DataError(f"{path}: malformed CSV at line {reader.line_num}: {err}") from None
    return [h for h in header if h], rows, encoding


def _read_xlsx(path: Path) -> tuple[list[str], Rows, str]:
    _check_file(path)
    import openpyxl

    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # zipfile.BadZipFile, KeyError, InvalidFileException, ...
        raise DataError(f"{path}: cannot read as an Excel .xlsx workbook ({type(err).__name__}: {err})") from None
    try:
        if not wb.worksheets:
            raise DataError(f"{path}: workbook has no sheets")
        it: Iterator[tuple[Any, ...]] = wb.worksheets[0].iter_rows(values_only=True)
        first = next(it, None)
        if first is None:
            raise DataError(f"{path}: first sheet is empty (no header row)")
        header = _clean_header(path, ["" if v is None else str(v) for v in first])
        rows: Rows = []
        for n, values in enumerate(it, start=1):
            if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
                continue
            rows.append((n, {col: v for col, v in zip(header, values, strict=False) if col}))
    finally:
        wb.close()
    return [h for h in header if h], rows, "xlsx"


def _clean_header(path: Path, names: list[str]) -> list[str]:
    header = [n.strip().lstrip("\ufeff") for n in names]
    seen: set[str] = set()
    for i, name in enumerate(header, start=1):
        if name and name in seen:
            raise DataError(f"{path}: column '{name}' appears twice in the header (column {i})")
        seen.add(name)
    return header


# --- mapping and checks ---


def _resolve_mapping(path: Path, header: list[str], columns: Mapping[str, str] | None) -> dict[str, str]:
    """Our field -> file column, with AUTO_COLUMNS filling fields the caller did not map."""
    mapping = dict(columns or {})
    available = set(header)
    for field, col in mapping.items():
        if col not in available:
            raise DataError(
                f"{path}: column '{col}' (for field '{field}') not found; available columns: {_list(header)}"
            )
    used = set(mapping.values())
    for field, col in AUTO_COLUMNS.items():
        if field not in mapping and col in available and col not in used and field not in available:
            mapping[field] = col
    return mapping


def _field_name(col: str, mapping: dict[str, str]) -> str | None:
    """The record key of a file column; None when a mapped field of that name hides it."""
    for field, mapped in mapping.items():
        if mapped == col:
            return field
    return None if col in mapping else col


def _to_record(raw: Mapping[str, Any], row: int, keys: dict[str, str | None]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for col, value in raw.items():
        key = keys.get(col, col)
        if key is not None:
            rec[key] = _clean_value(value)
    for field in ("title", "text"):
        value = rec.get(field)
        if value is not None and not isinstance(value, str):
            value = str(value)
        rec[field] = value if value is not None and value.strip() else None
    rid = rec.get("id")
    if isinstance(rid, float) and rid.is_integer():
        rid = int(rid)
    rec["id"] = str(row) if rid is None or (isinstance(rid, str) and not rid.strip()) else str(rid).strip()
    rec["_row"] = row
    return rec


def _clean_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return value


def _check(
    path: Path,
    records: list[dict[str, Any]],
    mapping: dict[str, str],
    fields: list[str],
    require_text: bool,
    label_column: str | None,
) -> None:
    if require_text and records and "title" not in fields and "text" not in fields:
        raise DataError(
            f"{path}: no title or text column; available columns: {_list(fields)} "
            f"(map them, e.g. columns={{'title': ..., 'text': ...}})"
        )
    if label_column is not None and label_column not in fields:
        label_column = next((f for f, col in mapping.items() if col == label_column), label_column)
    if label_column is not None and label_column not in fields:
        raise DataError(f"{path}: label column '{label_column}' not found; available columns: {_list(fields)}")
    title_col, text_col = mapping.get("title", "title"), mapping.get("text", "text")
    label_col = mapping.get(label_column, label_column) if label_column else None
    first_row: dict[str, int] = {}
    for rec in records:
        row = rec["_row"]
        if require_text and rec["title"] is None and rec["text"] is None:
            raise DataError(f"{path}: row {row}: no title and no text (columns '{title_col}', '{text_col}' are empty)")
        if label_column is not None:
            label = rec.get(label_column)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise DataError(f"{path}: row {row}: empty label (column '{label_col}')")
        rid = rec["id"]
        if rid in first_row:
            raise DataError(f"{path}: duplicate id '{rid}' in row {first_row[rid]} and row {row}")
        first_row[rid] = row


def _list(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "(none)"


def load_pairs_with_petitions(pairs_path: Path, petitions_path: Path | None = None) -> list[dict[str, Any]]:
    """Self-contained labelled pairs ``{"a": {petition}, "b": {petition}, "label"}``.

    Rows may already hold petitions inline, or hold ids (``{"a": id, "b": id, "label"}``, the repeat
    scorer's training format) resolved against ``petitions_path``.
    """
    rows = read_jsonl(pairs_path)
    by_id: dict[str, dict[str, Any]] = {}
    if petitions_path is not None:
        by_id = {str(r["id"]): r for r in load_records(petitions_path, require_text=False)}
    out = []
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or "a" not in row or "b" not in row or "label" not in row:
            raise DataError(f"{pairs_path}: line {n}: a pair needs fields a, b and label")
        sides = []
        for side in ("a", "b"):
            value = row[side]
            if isinstance(value, dict):
                sides.append(value)
            elif str(value) in by_id:
                sides.append({k: v for k, v in by_id[str(value)].items() if k != "_row"})
            else:
                where = f"in {petitions_path}" if petitions_path else "(pass --petitions FILE)"
                raise DataError(f"{pairs_path}: line {n}: petition id {value!r} of field {side} not found {where}")
        out.append({"a": sides[0], "b": sides[1], "label": row["label"]})
    return out
