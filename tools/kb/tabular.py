"""CSV and Parquet export/import of the knowledge base, lossless for every field.

One row per run; nested models are flattened with prefixes (``mf_`` meta-features, ``hp_``
hyperparameters, ``out_`` outcomes, ``prov_`` provenance), the columns derived from the
pydantic schema itself so that optional fields added later travel without touching this
module. Values that are not one scalar type (``hp_extra``, ``prov_notes``,
``out_learning_curve``, ``prov_row`` which may be int or text) are JSON-encoded.

CSV conventions: an empty cell is None; a cell holding exactly ``""`` is the empty string;
floats are written with ``repr`` so they read back bit-identical. Parquet keeps native
column types (nullable), so nothing needs a convention there.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from metallmix.atomic import atomic_path
from metallmix.errors import ImportFormatError, KnowledgeBaseError
from metallmix.tools.kb.records import KB_SCHEMA_VERSION, RunRecord
from metallmix.tools.metafeatures import range_problems

Kind = Literal["str", "int", "float", "bool", "datetime", "json"]

# Nested models of RunRecord and the prefix of their columns.
NESTED_PREFIXES = {
    "meta_features": "mf_",
    "hyperparameters": "hp_",
    "outcomes": "out_",
    "provenance": "prov_",
}
EMPTY_STRING = '""'
FORMATS = (".csv", ".parquet")
SCHEMA_KEY = "metallmix_kb_schema_version"


@dataclass(frozen=True)
class Column:
    """One flat column: its name, where it lives in a RunRecord and how it is encoded."""

    name: str
    parent: str | None
    field: str
    kind: Kind


def field_kind(annotation: Any) -> Kind:
    """The encoding of a field from its type: one scalar type, else JSON."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return field_kind(args[0]) if len(args) == 1 else "json"
    if origin is Literal:
        values = typing.get_args(annotation)
        return "str" if all(isinstance(v, str) for v in values) else "json"
    simple: dict[Any, Kind] = {
        str: "str",
        int: "int",
        float: "float",
        bool: "bool",
        datetime: "datetime",
    }
    return simple.get(annotation, "json")


def columns() -> list[Column]:
    """Every column of the flat view, in a stable order."""
    out: list[Column] = []
    for name, info in RunRecord.model_fields.items():
        if name in NESTED_PREFIXES:
            model = info.annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            prefix = NESTED_PREFIXES[name]
            for sub, sub_info in model.model_fields.items():
                out.append(Column(f"{prefix}{sub}", name, sub, field_kind(sub_info.annotation)))
        else:
            out.append(Column(name, None, name, field_kind(info.annotation)))
    return out


def _value(record: RunRecord, column: Column) -> Any:
    owner: Any = record if column.parent is None else getattr(record, column.parent)
    return getattr(owner, column.field)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _csv_cell(value: Any, kind: Kind) -> str:
    if value is None:
        return ""
    if kind == "json":
        return json.dumps(_to_jsonable(value))
    if kind == "str":
        return EMPTY_STRING if value == "" else str(value)
    if kind == "float":
        return repr(float(value))
    if kind == "bool":
        return "true" if value else "false"
    if kind == "datetime":
        return value.isoformat()
    return str(value)


def check_format(path: Path) -> str:
    """The file's format suffix, or a KnowledgeBaseError before any work is done."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise KnowledgeBaseError(
            f"{path}: unsupported format {suffix or '(no suffix)'}; use a .csv or .parquet file"
        )
    return suffix


def export_records(records: Iterable[RunRecord], path: Path) -> int:
    """Write records to ``path`` (.csv or .parquet) atomically; returns the row count."""
    path = Path(path).expanduser()
    suffix = check_format(path)
    cols = columns()
    rows = list(records)
    if suffix == ".csv":
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([c.name for c in cols])
            for record in rows:
                writer.writerow([_csv_cell(_value(record, c), c.kind) for c in cols])
    else:
        import pyarrow as pa  # heavy: only Parquet export needs it
        import pyarrow.parquet as pq

        arrow_types = {
            "str": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "bool": pa.bool_(),
            "datetime": pa.timestamp("us", tz="UTC"),
            "json": pa.string(),
        }
        data = {}
        for c in cols:
            values = [_value(r, c) for r in rows]
            if c.kind == "json":
                values = [None if v is None else json.dumps(_to_jsonable(v)) for v in values]
            data[c.name] = pa.array(values, type=arrow_types[c.kind])
        # The schema version travels in the file's metadata (CSV has no place for it).
        table = pa.table(data).replace_schema_metadata({SCHEMA_KEY: str(KB_SCHEMA_VERSION)})

        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    return len(rows)


def _parse_text(text: str, kind: Kind) -> Any:
    """A CSV cell back to its value; ValueError on text of the wrong type."""
    if text == "":
        return None
    if kind == "str":
        return "" if text == EMPTY_STRING else text
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in {"true", "1"}:
            return True
        if lowered in {"false", "0"}:
            return False
        raise ValueError(f"{text!r} is not true/false")
    if kind == "datetime":
        return datetime.fromisoformat(text)
    return json.loads(text)


def _check_header(path: Path, header: list[str], required: Iterable[str]) -> dict[str, Column]:
    known = {c.name: c for c in columns()}
    unknown = [h for h in header if h not in known]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(known), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ImportFormatError(
            f"{path}: unknown column(s) {', '.join(hints)}; columns are those of "
            "`metallmix kb export` (run_id, source, dataset, model, mf_*, hp_*, out_*, prov_*)"
        )
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ImportFormatError(f"{path}: column(s) {', '.join(duplicated)} appear twice")
    missing = [name for name in required if name not in header]
    if missing:
        raise ImportFormatError(f"{path}: required column(s) {', '.join(missing)} missing")
    return {h: known[h] for h in header}


def _assemble(values: dict[str, Any], cols: dict[str, Column]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in values.items():
        column = cols[name]
        if value is None:
            continue  # absent = schema default (None for optional fields)
        if column.parent is None:
            data[column.field] = value
        else:
            data.setdefault(column.parent, {})[column.field] = value
    return data


def _validate(path: Path, where: str, data: dict[str, Any]) -> RunRecord:
    try:
        record = RunRecord.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_column_of(err['loc'])}: {err['msg']}" for err in exc.errors()[:5])
        raise ImportFormatError(f"{path} {where}: invalid run ({problems})") from exc
    implausible = range_problems(record.meta_features)
    if implausible:
        raise ImportFormatError(
            f"{path} {where}: meta-features out of range ({'; '.join(implausible[:5])}); "
            "fix the row (a dataset card enforces the same bounds)"
        )
    return record


def _column_of(loc: tuple[Any, ...]) -> str:
    if loc and loc[0] in NESTED_PREFIXES and len(loc) > 1:
        rest = ".".join(str(p) for p in loc[2:])
        return f"{NESTED_PREFIXES[str(loc[0])]}{loc[1]}" + (f"[{rest}]" if rest else "")
    return ".".join(str(p) for p in loc) or "row"


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ImportFormatError(f"{path} is empty; expected a header row")
            yield 1, {h: h for h in header}
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ImportFormatError(
                        f"{path} line {line}: {len(row)} cells, the header has {len(header)}"
                    )
                yield line, dict(zip(header, row, strict=True))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportFormatError(f"cannot read {path}: {exc}") from exc


def _read_csv(
    path: Path, defaults: dict[str, Any], required: Iterable[str]
) -> list[tuple[str, dict[str, Any]]]:
    rows = _iter_csv(path)
    _, header_map = next(rows)
    cols = _check_header(path, list(header_map), required)
    out: list[tuple[str, dict[str, Any]]] = []
    for line, cells in rows:
        values: dict[str, Any] = {}
        for name, text in cells.items():
            try:
                values[name] = _parse_text(text, cols[name].kind)
            except (ValueError, json.JSONDecodeError) as exc:
                raise ImportFormatError(
                    f"{path} line {line}, column {name!r}: {text!r} is not a valid "
                    f"{cols[name].kind} ({exc})"
                ) from exc
        out.append((f"line {line}", {**defaults, **_assemble(values, cols)}))
        if "run_id" not in out[-1][1]:
            out[-1][1]["__cells"] = cells
    return out


def _read_parquet(
    path: Path, defaults: dict[str, Any], required: Iterable[str]
) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq  # heavy: only Parquet import needs it

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise ImportFormatError(f"{path} is not a readable Parquet file: {exc}") from exc
    version = (table.schema.metadata or {}).get(SCHEMA_KEY.encode())
    if version is not None and int(version) > KB_SCHEMA_VERSION:
        raise ImportFormatError(
            f"{path} was exported with KB schema version {int(version)}, this MetaLLMiX reads "
            f"up to {KB_SCHEMA_VERSION}; upgrade metallmix"
        )
    cols = _check_header(path, list(table.column_names), required)
    out: list[tuple[str, dict[str, Any]]] = []
    for index, row in enumerate(table.to_pylist()):
        values: dict[str, Any] = {}
        for name, value in row.items():
            if value is not None and cols[name].kind == "json":
                try:
                    value = json.loads(value)
                except (TypeError, json.JSONDecodeError) as exc:
                    raise ImportFormatError(
                        f"{path} row {index}, column {name!r}: not valid JSON ({exc})"
                    ) from exc
            values[name] = value
        out.append((f"row {index}", {**defaults, **_assemble(values, cols)}))
        if "run_id" not in out[-1][1]:
            out[-1][1]["__cells"] = {k: str(v) for k, v in row.items()}
    return out


def _records(
    path: Path, parsed: list[tuple[str, dict[str, Any]]], id_prefix: str | None
) -> list[RunRecord]:
    records: list[RunRecord] = []
    seen: dict[str, str] = {}
    for where, data in parsed:
        cells = data.pop("__cells", None)
        if cells is not None and id_prefix is not None:
            # No run_id column: an id from the row's content, so re-importing the same
            # rows (even reordered) is idempotent.
            digest = hashlib.sha256(json.dumps(cells, sort_keys=True).encode()).hexdigest()
            data["run_id"] = f"{id_prefix}:{digest[:16]}"
        record = _validate(path, where, data)
        if record.run_id in seen:
            raise ImportFormatError(
                f"{path} {where}: run_id {record.run_id} repeats {seen[record.run_id]}; "
                "run ids must be unique"
            )
        seen[record.run_id] = where
        records.append(record)
    return records


def _source_path(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ImportFormatError(f"{path} does not exist or is not a file")
    return path


def read_records(path: Path) -> list[RunRecord]:
    """Read an export of ``metallmix kb export`` (.csv or .parquet) back into records.

    Strict: ``run_id`` and ``source`` columns are required; every row is validated before
    anything is returned.
    """
    path = _source_path(path)
    suffix = check_format(path)
    reader = _read_csv if suffix == ".csv" else _read_parquet
    return _records(path, reader(path, {}, ("run_id", "source")), None)


def import_csv(path: Path) -> list[RunRecord]:
    """Runs from a user's CSV in the export's column layout (the ``(3) CSV`` importer).

    Lenient where a hand-made table is: ``source`` defaults to ``csv``, a missing
    ``run_id`` becomes ``csv:<hash of the row>``, provenance records the file and line.
    """
    path = _source_path(path)
    if path.suffix.lower() != ".csv":
        raise ImportFormatError(f"{path}: import-csv reads .csv files; use `kb import` for Parquet")
    parsed = _read_csv(path, {"source": "csv"}, ("dataset", "model"))
    for where, data in parsed:
        provenance = data.setdefault("provenance", {})
        provenance.setdefault("file", path.name)
        provenance.setdefault("row", int(where.split()[-1]))
    return _records(path, parsed, "csv")
