"""``metallmix kb ...``: inspect and grow the knowledge base."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from metallmix import config
from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.errors import ConfigError, KnowledgeBaseError
from metallmix.tools.kb.download import QUICKTUNE_ARCHIVE_SHA256, download_quicktune
from metallmix.tools.kb.importers import Importer, get_importer, run_import
from metallmix.tools.kb.importers.csv import CsvImporter
from metallmix.tools.kb.importers.mlflow import MlflowImporter
from metallmix.tools.kb.importers.quicktune import QuickTuneImporter
from metallmix.tools.kb.records import RunRecord
from metallmix.tools.kb.regime import REGIME_DESCRIPTION
from metallmix.tools.kb.store import AddResult, open_kb
from metallmix.tools.kb.tabular import check_format, export_records, read_records

kb_app = typer.Typer(help="Inspect and grow the knowledge base.", no_args_is_help=True)

KbOption = typer.Option(
    None, "--kb", help="Knowledge-base file (default: METALLMIX_KB or the layered default)."
)


@kb_app.command("info")
def info(kb: Path | None = KbOption, as_json: bool = JsonOption) -> None:
    """Counts of runs per source, compute regime, status and dataset."""
    store = open_kb(kb, read_only=True)
    summary = store.info()

    def render(console: Console) -> None:
        console.print(f"[bold]Knowledge base[/bold] {summary.location}")
        console.print(f"total runs: {summary.total}  (schema v{summary.schema_version})")
        if summary.unreadable:
            console.print(
                f"[yellow]{len(summary.unreadable)} unreadable record(s) skipped[/yellow] "
                f"(remove with `metallmix kb remove ID`): "
                + ", ".join(f"{k} ({v})" for k, v in list(summary.unreadable.items())[:10])
            )
        regimes = Table(title="by compute regime")
        for column in ("regime", "runs", "sources", "what"):
            regimes.add_column(column)
        for regime, count in summary.by_regime.items():
            sources = summary.by_regime_source.get(regime, {})
            regimes.add_row(
                regime,
                str(count),
                ", ".join(f"{s} {n}" for s, n in sources.items()) or "-",
                REGIME_DESCRIPTION.get(regime, ""),  # type: ignore[call-overload]
            )
        console.print(regimes)
        for title, counts in (
            ("source", summary.by_source),
            ("status", summary.by_status),
            ("dataset", summary.by_dataset),
        ):
            table = Table(title=f"by {title}")
            table.add_column(title)
            table.add_column("runs", justify="right")
            for key, value in counts.items():
                table.add_row(key, str(value))
            console.print(table)

    emit(summary.to_dict(), as_json, render)


def _report(result: AddResult, extra: dict[str, object], as_json: bool, what: str) -> None:
    """The summary every import prints: inserted, skipped, plus command-specific fields."""
    summary: dict[str, object] = {"inserted": result.inserted, "skipped": result.skipped, **extra}

    def render(console: Console) -> None:
        console.print(
            f"{what}: [bold]{result.inserted}[/bold] inserted, {result.skipped} skipped "
            "(already in the knowledge base)"
        )
        for key, value in extra.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                continue  # detail for --json; already reported on stderr
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            console.print(f"{key}: {value}")

    emit(summary, as_json, render)


def _import(importer: Importer, location: str, kb: Path | None, as_json: bool) -> None:
    """Every ``kb import-*`` verb: the registry's import path, then the summary (which
    names the KB written to)."""
    done = run_import(
        importer, location, lambda: open_kb(kb), progress=progress, notify=stderr.print
    )
    _report(done.added, {**done.imported.details, "kb": done.kb}, as_json, done.imported.label)


@kb_app.command("import-quicktune")
def import_quicktune_cmd(
    root: Path = typer.Argument(..., help="Quick-Tune version folder (holds table.csv)."),
    datasets: str | None = typer.Option(
        None, "--datasets", help="Comma-separated subset of datasets, e.g. BRD,AWA."
    ),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Import the public Quick-Tune meta-dataset (idempotent: re-running inserts nothing)."""
    _import(QuickTuneImporter(datasets=datasets), str(root), kb, as_json)


def _add_all(store_spec: Path | None, records: list[RunRecord], what: str) -> AddResult:
    """One transaction for the whole batch: a failure leaves the KB as it was."""
    store = open_kb(store_spec)
    with progress(f"writing {what}", len(records)) as advance:
        result = store.add(records)
        advance(len(records))
    return result


@kb_app.command("import-csv")
def import_csv_cmd(
    file: Path = typer.Argument(..., help="CSV in the column layout of `kb export`."),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Import runs from a CSV (source 'csv' unless a source column says otherwise)."""
    _import(CsvImporter(), str(file), kb, as_json)


@kb_app.command("import-from")
def import_from_cmd(
    source: str = typer.Argument(..., help="A registered source, e.g. quicktune, mlflow, csv."),
    location: str = typer.Argument(..., help="Where the importer reads: a folder, file or URI."),
    option: list[str] | None = typer.Option(
        None, "--option", help="An importer option as key=value; repeat for several."
    ),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Import runs with any registered importer (a new source is one module in
    tools/kb/importers/, see docs/architecture.md)."""
    options: dict[str, str] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: write key=value")
        options[key.strip()] = value
    _import(get_importer(source).from_options(options), location, kb, as_json)


@kb_app.command("import")
def import_cmd(
    file: Path = typer.Argument(..., help="An export of `kb export` (.csv or .parquet)."),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Import an export (.csv or .parquet) back, record for record."""
    records = read_records(file)
    result = _add_all(kb, records, f"{len(records)} runs from {file.name}")
    _report(result, {"file": str(file), "rows": len(records)}, as_json, str(file))


@kb_app.command("export")
def export_cmd(
    file: Path = typer.Argument(..., help="Target file, .csv or .parquet."),
    source: str | None = typer.Option(None, "--source", help="Only runs of this source."),
    dataset: str | None = typer.Option(None, "--dataset", help="Only runs of this dataset."),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Export the knowledge base (all fields, lossless) to CSV or Parquet."""
    check_format(file)
    store = open_kb(kb, read_only=True)
    records = store.records(source=source, dataset=dataset)
    with progress(f"exporting to {file.name}", len(records)) as advance:
        count = export_records(records, file)
        advance(count)
    summary = {"file": str(file), "rows": count, "kb": store.location}
    emit(summary, as_json, lambda console: console.print(f"exported {count} runs to {file}"))


@kb_app.command("remove")
def remove_cmd(
    run_ids: list[str] = typer.Argument(..., help="Run id(s) to delete, as `kb info` lists them."),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Delete runs by id in one transaction (e.g. a record that no longer validates)."""
    store = open_kb(kb, read_only=True)  # a mistyped --kb must not create a file
    present = store.run_ids()
    missing = [r for r in run_ids if r not in present]
    if missing:
        raise KnowledgeBaseError(
            f"no run {', '.join(missing[:5])} in {store.location}; nothing was removed "
            "(see `metallmix kb export` for the ids)"
        )
    removed = open_kb(kb).remove(run_ids)
    summary = {"removed": removed, "run_ids": run_ids, "kb": store.location}
    emit(summary, as_json, lambda c: c.print(f"removed {removed} run(s) from {store.location}"))


@kb_app.command("landmarks")
def landmarks_cmd(
    data_dir: Path = typer.Option(
        ...,
        "--data-dir",
        help="Folder of the KB's datasets (.npz files or folders), matched by task name.",
    ),
    kb: Path | None = KbOption,
    seed: int = typer.Option(0, "--seed", help="Seed of the landmarks' image subsample."),
    as_json: bool = JsonOption,
) -> None:
    """(Re)compute the landmarks of every KB task whose images are in --data-dir.

    Landmarks are seconds-cheap scores measured on a task's own images (a frozen-feature
    read-out per pretrained backbone, and one on raw pixels; see the meta-learner's docs).
    Tasks without reachable images (Quick-Tune, cards) keep them missing. All records are
    rewritten in one transaction after every task is measured: a failure or an interrupt
    leaves the KB as it was.
    """
    # Imported here: torch and the datasets load only for this verb.
    from metallmix.tools.meta.landmarks import landmarks_for_kb

    store = open_kb(kb, read_only=True)  # a mistyped --kb must not create a file
    records = store.records()

    def on_task(done: int, total: int, task: str, result: object, error: str | None) -> None:
        what = error if error is not None else getattr(result, "describe", lambda: "")()
        seconds = getattr(result, "seconds", None)
        took = f" ({seconds:.1f} s)" if isinstance(seconds, float) else ""
        stderr.print(f"  landmarks {done}/{total} {task}: {what}{took}", soft_wrap=True)

    found = landmarks_for_kb(records, data_dir, seed=seed, on_task=on_task)
    if found.missing:
        stderr.print(
            f"  landmarks missing (no images) for {len(found.missing)} task(s): "
            + ", ".join(found.missing[:8])
            + (" ..." if len(found.missing) > 8 else ""),
            soft_wrap=True,
        )
    rewritten = open_kb(kb).replace(found.records) if found.records else 0
    summary = {
        "kb": store.location,
        "rewritten": rewritten,
        "tasks_measured": sorted(found.measured),
        "tasks_missing": found.missing,
        "tasks_failed": found.failed,
        "seconds": round(sum(r.seconds for r in found.measured.values()), 2),
    }
    emit(
        summary,
        as_json,
        lambda c: c.print(
            f"landmarks of {len(found.measured)} task(s) written to {rewritten} run(s) in "
            f"{store.location}; {len(found.missing)} task(s) without images keep them missing"
        ),
    )


@kb_app.command("import-mlflow")
def import_mlflow_cmd(
    tracking_uri: str | None = typer.Option(
        None, "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or local)."
    ),
    experiment: list[str] | None = typer.Option(
        None, "--experiment", help="Experiment name; repeat for several (default: all)."
    ),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Import training runs from an MLflow tracking store."""
    uri = tracking_uri or config.tracking_uri()
    importer = MlflowImporter(experiments=list(experiment) if experiment else None)
    _import(importer, uri, kb, as_json)


@kb_app.command("download-quicktune")
def download_quicktune_cmd(
    version: str = typer.Option("extended", "--version", help="micro, mini or extended."),
    dest: Path | None = typer.Option(
        None, "--dest", help="Folder for the unpacked versions (default: the cache folder)."
    ),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Archive location: https://, file:// or a local path (default: the public "
        "Quick-Tune archive, qt_metadataset.zip, linked from the Quick-Tune README).",
    ),
    sha256: str | None = typer.Option(
        None,
        "--sha256",
        help="Expected sha256 of the archive. Upstream publishes none and none is pinned, so "
        "without it the download is unverified; its hash is printed so that you can pin it.",
    ),
    force: bool = typer.Option(False, "--force", help="Download even if already present."),
    import_too: bool = typer.Option(
        False, "--import", help="Import the runs into the knowledge base afterwards."
    ),
    kb: Path | None = KbOption,
    as_json: bool = JsonOption,
) -> None:
    """Download and unpack the public Quick-Tune meta-dataset (needs the network)."""
    with progress(f"downloading Quick-Tune {version}", None) as advance:
        result = download_quicktune(version, dest, url, sha256, force=force, on_bytes=advance)
    summary: dict[str, object] = {
        "path": str(result.path),
        "version": result.version,
        "sha256": result.sha256,
        "bytes": result.bytes,
        "reused": result.reused,
        "verified": bool(sha256) or (url is None and QUICKTUNE_ARCHIVE_SHA256 is not None),
    }
    if import_too:
        done = run_import(QuickTuneImporter(), str(result.path), lambda: open_kb(kb))
        summary.update(inserted=done.added.inserted, skipped=done.added.skipped)

    def render(console: Console) -> None:
        state = "already present" if result.reused else f"downloaded ({result.bytes} bytes)"
        console.print(f"Quick-Tune {result.version} {state}: {result.path}")
        if result.sha256:
            checked = "verified" if summary["verified"] else "not verified: pass --sha256 HASH"
            console.print(f"sha256: {result.sha256} ({checked})")
        if import_too:
            console.print(f"imported: {summary['inserted']} inserted, {summary['skipped']} skipped")
        else:
            console.print(f"next: metallmix kb import-quicktune {result.path}")

    emit(summary, as_json, render)


def register(app: typer.Typer) -> None:
    app.add_typer(kb_app, name="kb")
