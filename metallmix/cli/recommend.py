"""``metallmix recommend PATH`` and ``metallmix demo``: the product in one command."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from metallmix.cli.output import JsonOption, emit, progress, stderr
from metallmix.errors import DatasetError

DEMO_CARDS = {
    "isic2018": "isic2018_ham10000.json",
    "chest-xray": "chest_xray_pneumonia.json",
}

LlmOption = typer.Option(
    None,
    "--llm",
    help="LLM: 'fast' (0.5B), 'default' (1.5B), a registry name or a .gguf path "
    "(default: METALLMIX_LLM or the bundled default).",
)
KbOption = typer.Option(
    None, "--kb", help="Knowledge-base file (default: METALLMIX_KB or the layered default)."
)
SeedOption = typer.Option(0, "--seed", help="Seed of the shortlist sampler and the LLM.")


def example_card(name: str) -> Path:
    """Path of a dataset card shipped in ``metallmix/data/examples``."""
    if name not in DEMO_CARDS:
        raise DatasetError(f"unknown example {name!r}; choose one of {', '.join(DEMO_CARDS)}")
    return Path(str(resources.files("metallmix") / "data" / "examples" / DEMO_CARDS[name]))


def _run(
    path: Path,
    modality: str | None,
    llm: str | None,
    kb: Path | None,
    seed: int,
    no_judge_llm: bool,
) -> Any:
    from metallmix.api import recommend

    with progress("recommending", total=None) as advance:

        def on_node(node: str) -> None:
            stderr.print(f"  done: {node}")
            advance(1)

        return recommend(
            path,
            progress=False,  # the bar above is the CLI's progress display
            modality=modality,
            llm=llm,
            kb=kb,
            seed=seed,
            judge_with_llm=not no_judge_llm,
            on_node=on_node,
            on_shortlist=print_shortlist,
        )


def print_shortlist(shortlist: Any) -> None:
    """The scored shortlist on stderr as soon as it exists (seconds), while the LLM works."""
    from metallmix.agents.evidence import pct, ranked_candidates, seconds

    stderr.print("  scored shortlist (the LLM now chooses and explains):")
    for c in ranked_candidates(shortlist):
        stderr.print(
            escape(
                f"    {c.candidate_id} {c.model}: predicted {pct(c.predicted_accuracy)} "
                f"[{pct(c.accuracy_low)}, {pct(c.accuracy_high)}], {seconds(c.predicted_seconds)}"
            )
        )


def render(rec: Any, console: Console) -> None:
    """The recommendation, its explanation, the judge's verdict and where to audit it."""
    from metallmix.tools.meta.search_space import hp_values

    console.print(
        Panel.fit(escape(rec.summary()), title=escape(f"Recommendation for {rec.dataset}"))
    )
    table = Table(title="hyperparameters", show_header=False)
    for key, value in hp_values(rec.hyperparameters).items():
        if value is not None:
            table.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    if rec.expected_train_seconds is not None:
        table.add_row("expected training time", f"{rec.expected_train_seconds:.0f} s")
    console.print(table)
    console.print(Panel(escape(rec.explanation), title="why"))  # "[run ID]" is not markup
    if rec.judge is not None:
        console.print(escape(judge_line(rec)))
    if rec.confidence:
        console.print(f"confidence: {rec.confidence} (set by code from the interval width)")
    if rec.mlflow_run_id:
        from metallmix.tracking import ui_hint

        store, command, url = ui_hint(rec.mlflow_run_id)
        console.print(
            f"MLflow run [bold]{rec.mlflow_run_id}[/bold] in {escape(store)}\n"
            f"  see it: {escape(command)}\n  then open {escape(url)}",
            soft_wrap=True,
        )
    if getattr(rec, "verification", None) is not None:
        from metallmix.cli.verify import render_verification

        render_verification(rec.verification, console)


def judge_line(rec: Any) -> str:
    """What the judge decided, as it decided it: pass/fail, the LLM's grade or why there is
    none, the failed checks, and whether this is the templated fallback."""
    v = rec.judge
    verdict = "passed" if v.passed else "failed"
    if v.scores is not None:
        grade = (
            f"LLM grade format {v.scores.format}/5, accuracy {v.scores.accuracy}/5, "
            f"completeness {v.scores.completeness}/5"
        )
    elif v.llm_graded is False:
        grade = f"LLM grading failed ({v.llm_attempts} tries): {v.llm_error or 'no answer'}"
    else:
        grade = "code checks only (no LLM grade)"
    parts = [f"judge: {verdict}", grade, f"attempts: {rec.attempts}"]
    if v.failures:
        parts.append("failed: " + "; ".join(v.failures))
    if rec.fallback:
        parts.append("fallback: the LLM's answers were rejected, templated explanation")
    return "; ".join(parts)


def recommend_cmd(
    path: Path = typer.Argument(..., help="Dataset (.npz, folder, .csv manifest) or card JSON."),
    modality: str | None = typer.Option(None, "--modality", help="Imaging modality override."),
    llm: str | None = LlmOption,
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    no_judge_llm: bool = typer.Option(
        False, "--no-judge-llm", help="Judge by code checks only (faster; no LLM scores)."
    ),
    verify: int | None = typer.Option(
        None,
        "--verify",
        min=1,
        help="Then train the top K shortlisted configurations with successive halving "
        "and keep the best (resumable: re-run the same command to continue).",
    ),
    budget_minutes: float | None = typer.Option(
        None, "--budget-minutes", help="--verify: training-time budget in minutes."
    ),
    backend: str = typer.Option("local", "--backend", help="--verify: where runs train."),
    address: str | None = typer.Option(None, "--address", help="--verify: Ray cluster."),
    workers: int = typer.Option(
        0, "--workers", min=0, help="--verify: local processes / CPUs of a private Ray."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="--verify: torch threads per run."
    ),
    max_train_images: int | None = typer.Option(
        None, "--max-train-images", min=10, help="--verify: seeded training subsample."
    ),
    study: str | None = typer.Option(None, "--study", help="--verify: Optuna study name."),
    as_json: bool = JsonOption,
) -> None:
    """Recommend a model and hyperparameters for a dataset, with the reasons."""
    if verify is not None:
        from metallmix.cli.verify import run_verified

        rec = run_verified(
            path,
            modality=modality,
            llm=llm,
            kb=kb,
            seed=seed,
            no_judge_llm=no_judge_llm,
            k=verify,
            budget_minutes=budget_minutes,
            backend=backend,
            address=address,
            workers=workers,
            threads=threads,
            max_train_images=max_train_images,
            study=study,
        )
        emit(rec.model_dump(mode="json"), as_json, lambda console: render(rec, console))
        return
    rec = _run(path, modality, llm, kb, seed, no_judge_llm)
    emit(rec.model_dump(mode="json"), as_json, lambda console: render(rec, console))


def demo_cmd(
    example: str = typer.Option(
        "isic2018", "--example", help=f"Bundled dataset card: {', '.join(DEMO_CARDS)}."
    ),
    llm: str | None = LlmOption,
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    as_json: bool = JsonOption,
) -> None:
    """Recommend for a public medical dataset described by a card shipped in the package."""
    card = example_card(example)
    stderr.print(f"demo: recommending for the bundled card {card.name}")
    rec = _run(card, None, llm, kb, seed, False)
    emit(rec.model_dump(mode="json"), as_json, lambda console: render(rec, console))


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend_cmd)
    app.command("demo")(demo_cmd)
