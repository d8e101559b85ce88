"""``metallmix recommend PATH`` and ``metallmix demo``: the product in one command."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from metallmix.agents.evidence import pct, ranked_candidates, seconds
from metallmix.cli.groups import options_from
from metallmix.cli.output import JsonOption, emit, llm_choice, progress, stderr
from metallmix.cli.verify import render_verification, run_printer
from metallmix.errors import EXIT_NOT_RECORDED, DatasetError, KnowledgeBaseError
from metallmix.progress import wait_lines
from metallmix.tools.kb.regime import REGIMES
from metallmix.tools.meta.metric import METRIC_LABEL
from metallmix.tools.meta.search_space import hp_values
from metallmix.tools.tracking import ui_hint
from metallmix.tools.training.backends import make_backend

DEMO_CARDS = {
    "isic2018": "isic2018_ham10000.json",
    "chest-xray": "chest_xray_pneumonia.json",
}

LlmOption = typer.Option(
    None,
    "--llm",
    callback=llm_choice,
    help="LLM: 'fast' (0.5B), 'default' (1.5B), a registry name or a .gguf path "
    "(default: METALLMIX_LLM or the bundled default).",
)
KbOption = typer.Option(
    None, "--kb", help="Knowledge-base file (default: METALLMIX_KB or the layered default)."
)
SeedOption = typer.Option(0, "--seed", help="Seed of the shortlist sampler and the LLM.")
NoTrackOption = typer.Option(
    False,
    "--no-track",
    help="Do not record the recommendation in MLflow (no run, no trace). Without it, a "
    "failure to record still prints the answer and exits 3.",
)
ComputeOption = typer.Option(
    "auto",
    "--compute",
    help="Your compute: 'cpu' (small models we train on a CPU) or 'gpu' (fine-tune a "
    "pretrained timm model, Quick-Tune runs); 'auto': gpu when torch sees CUDA, else cpu.",
)
Compute = Literal["cpu", "gpu", "auto"]


def _regime(compute: Compute) -> str | None:
    """The API's ``compute``: ``None`` lets it pick the machine's regime."""
    return None if compute == "auto" else compute


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
    compute: str | None = None,
    verify: dict[str, Any] | None = None,
    track: bool = True,
) -> Any:
    """One recommendation under one progress display (a line per finished graph node);
    ``verify`` (``recommend``'s verify arguments) adds a line per training run."""
    # Imported here: the API loads LangGraph, MLflow and the meta-learner, which
    # `metallmix --help` and the other verbs must not pay for.
    from metallmix.api import recommend

    label = "recommending" if verify is None else "recommending + verifying"
    with progress(label, total=None) as advance:

        def on_node(node: str) -> None:
            stderr.print(f"  done: {node}")
            advance(1)

        extra: dict[str, Any] = {}
        if verify is not None:
            options = {**verify.get("verify_options", {}), "on_run": run_printer(advance)}
            extra = {**verify, "verify_options": options}
        with wait_lines(True):  # long waits inside a node (the meta-learner fit) still print
            return recommend(
                path,
                progress=False,  # the bar above is the CLI's progress display
                modality=modality,
                llm=llm,
                kb=kb,
                seed=seed,
                judge_with_llm=not no_judge_llm,
                on_node=on_node,
                compute=compute,
                on_shortlist=print_shortlist,
                track=track,
                **extra,
            )


def print_shortlist(shortlist: Any) -> None:
    """The scored shortlist on stderr as soon as it exists (seconds), while the LLM works."""
    stderr.print("  scored shortlist (the LLM now chooses and explains):")
    if getattr(shortlist, "learner_fit", "").startswith("warm"):
        stderr.print(escape(f"  meta-learner: {shortlist.learner_fit}"), soft_wrap=True)
    if getattr(shortlist, "interval_note", ""):
        stderr.print(escape(f"  interval: {shortlist.interval_note}"), soft_wrap=True)
    stderr.print(escape(f"  {rank_basis_line(shortlist)}"), soft_wrap=True)
    for c in ranked_candidates(shortlist):
        stderr.print(
            escape(
                f"    {c.candidate_id} {c.model}: predicted {pct(c.predicted_accuracy)} "
                f"[{pct(c.accuracy_low)}, {pct(c.accuracy_high)}], {seconds(c.predicted_seconds)}"
            )
        )


def rank_basis_line(shortlist: Any) -> str:
    """Why c1 is first: the order is the meta-learner's rank, not the printed prediction."""
    metric = METRIC_LABEL.get(shortlist.metric, shortlist.metric)
    basis = shortlist.rank_basis or "ranked by the meta-learner"
    return f"order: {basis}; predicted validation {metric} shown"


def render(rec: Any, console: Console) -> None:
    """The recommendation, its explanation, the judge's verdict and where to audit it."""
    if getattr(rec, "kb_change", ""):  # the loop is never silent: say what the KB learnt
        console.print(
            f"[bold]knowledge base changed:[/bold] {escape(rec.kb_change)}", soft_wrap=True
        )
    if getattr(rec, "ood", False):  # lead with what to do, not with a near-[0%, 100%] band
        console.print(ood_panel(rec))
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
    if rec.rank_basis:
        console.print(f"shortlist order: {escape(rec.rank_basis)}", soft_wrap=True)
    if rec.metric_note:
        console.print(f"metric: {escape(rec.metric_note)}")
    if rec.baseline_warning:
        console.print(f"[yellow]warning: {escape(rec.baseline_warning)}[/yellow]")
    console.print(Panel(escape(rec.explanation), title="why"))  # "[run ID]" is not markup
    if rec.judge is not None:
        console.print(escape(judge_line(rec)))
    if rec.confidence:
        console.print(f"confidence: {rec.confidence} (set by code from the interval width)")
    if rec.mlflow_run_id:
        store, command, url = ui_hint(rec.mlflow_run_id)
        console.print(
            f"MLflow run [bold]{rec.mlflow_run_id}[/bold] in {escape(store)}\n"
            f"  see it: {escape(command)}\n  then open {escape(url)}",
            soft_wrap=True,
        )
    if getattr(rec, "verification", None) is not None:
        render_verification(rec.verification, console)


def ood_panel(rec: Any) -> Panel:
    """The out-of-range advice in a panel that wraps its lines (printed with
    ``soft_wrap=True`` a panel crops every line at the terminal's width instead)."""
    return Panel(escape(ood_advice(rec)), title="outside what the knowledge base knows")


def ood_advice(rec: Any) -> str:
    """For a dataset outside the KB's range: why, and what gives a useful answer instead of
    an interval that spans almost everything."""
    reasons = "; ".join(getattr(rec, "ood_reasons", []) or []) or "far from every KB dataset"
    other = "gpu" if getattr(rec, "compute", None) == "cpu" else "cpu"
    return (
        f"Your dataset is outside the range of the KB's runs ({reasons}), so the predicted "
        "score below is a guess with a wide interval. What you can do:\n"
        f"  - measure instead of predicting: metallmix recommend {rec.dataset} --verify 3 "
        "(trains the top 3 candidates with successive halving; add --max-train-images N to "
        "cap the cost)\n"
        f"  - ask the other compute regime: --compute {other}\n"
        "  - teach the KB your history: metallmix kb import-mlflow (your past MLflow runs) "
        "or metallmix validate after training one candidate; the next answer says what "
        "changed"
    )


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
    if rec.fallback and rec.llm_error:
        parts.append(f"fallback: the LLM failed ({rec.llm_error}), templated explanation")
    elif rec.fallback:
        parts.append("fallback: the LLM's answers were rejected, templated explanation")
    return "; ".join(parts)


@dataclass(frozen=True, kw_only=True)
class VerifyCliOptions:
    """``--verify K`` and the options that only apply with it."""

    verify: Annotated[
        int | None,
        typer.Option(
            "--verify",
            min=1,
            help="Then train the top K shortlisted configurations with successive halving "
            "and keep the best (resumable: re-run the same command to continue).",
        ),
    ] = None
    budget_minutes: Annotated[
        float | None,
        typer.Option("--budget-minutes", help="--verify: training-time budget in minutes."),
    ] = None
    backend: Annotated[str, typer.Option("--backend", help="--verify: where runs train.")] = "local"
    address: Annotated[str | None, typer.Option("--address", help="--verify: Ray cluster.")] = None
    workers: Annotated[
        int,
        typer.Option("--workers", min=0, help="--verify: local processes / CPUs of a private Ray."),
    ] = 0
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="--verify: torch threads per run.")
    ] = None
    max_train_images: Annotated[
        int | None,
        typer.Option("--max-train-images", min=10, help="--verify: seeded training subsample."),
    ] = None
    study: Annotated[str | None, typer.Option("--study", help="--verify: Optuna study name.")] = (
        None
    )
    shortlist_rule: Annotated[
        str | None,
        typer.Option(
            "--shortlist",
            help="--verify: which K to train: top (the best-ranked), portfolio (the best, "
            "then the greedy hedge over the KB's datasets) or family (one per family first); "
            "default: the rule LODO supports (docs/guide/verify.md).",
        ),
    ] = None

    def check_unused(self) -> None:
        """Without ``--verify``, any of its options is a mistake worth saying."""
        given = {
            "--budget-minutes": self.budget_minutes is not None,
            "--backend": self.backend != "local",
            "--address": self.address is not None,
            "--workers": self.workers != 0,
            "--threads": self.threads is not None,
            "--max-train-images": self.max_train_images is not None,
            "--study": self.study is not None,
            "--shortlist": self.shortlist_rule is not None,
        }
        for option, used in given.items():
            if used:
                raise typer.BadParameter(
                    "only applies with --verify K (training the top K candidates); add "
                    "--verify or drop it",
                    param_hint=f"'{option}'",
                )

    def request(self, engine: Any) -> dict[str, Any]:
        """What :func:`metallmix.recommend` takes for ``verify=K`` on ``engine``."""
        return {
            "verify": self.verify,
            "budget_minutes": self.budget_minutes,
            "backend": engine,
            "verify_options": {
                "study": self.study,
                "max_train_images": self.max_train_images,
                "threads": self.threads,
                **({"shortlist_rule": self.shortlist_rule} if self.shortlist_rule else {}),
            },
        }


@options_from("verification", VerifyCliOptions)
def recommend_cmd(
    path: Path = typer.Argument(
        ..., metavar="DATA", help="Dataset (.npz, folder, .csv manifest) or card JSON."
    ),
    modality: str | None = typer.Option(None, "--modality", help="Imaging modality override."),
    llm: str | None = LlmOption,
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    no_judge_llm: bool = typer.Option(
        False, "--no-judge-llm", help="Judge by code checks only (faster; no LLM scores)."
    ),
    *,
    verification: VerifyCliOptions,  # expanded into its options
    compute: Compute = ComputeOption,
    no_track: bool = NoTrackOption,
    as_json: bool = JsonOption,
) -> None:
    """Recommend a model and hyperparameters for a dataset, with the reasons.

    Exit 3: the answer is printed but recording it in MLflow failed (the last line says why).
    """
    regime = _regime(compute)
    if verification.verify is None:
        verification.check_unused()
        rec = _run(path, modality, llm, kb, seed, no_judge_llm, regime, track=not no_track)
    else:
        if no_track:
            raise typer.BadParameter(
                "cannot be combined with --verify: verification trains recorded runs (MLflow "
                "and the KB are where they go); drop one of the two",
                param_hint="'--no-track'",
            )
        engine = make_backend(
            verification.backend,
            address=verification.address,
            workers=verification.workers or None,
        )
        try:
            rec = _run(
                path,
                modality,
                llm,
                kb,
                seed,
                no_judge_llm,
                regime,
                verify=verification.request(engine),
                track=not no_track,
            )
        finally:
            engine.close()
    emit(rec.model_dump(mode="json"), as_json, lambda console: render(rec, console))
    not_recorded(rec)


def not_recorded(rec: Any) -> None:
    """After the answer is out: one line and exit 3 when MLflow did not record it."""
    problem = getattr(rec, "tracking_error", None)
    if problem:
        stderr.print(
            escape(f"error: answer given but not recorded in MLflow: {problem}"), soft_wrap=True
        )
        raise typer.Exit(EXIT_NOT_RECORDED)


def demo_cmd(
    example: str = typer.Option(
        "isic2018", "--example", help=f"Bundled dataset card: {', '.join(DEMO_CARDS)}."
    ),
    llm: str | None = LlmOption,
    kb: Path | None = KbOption,
    seed: int = SeedOption,
    compute: Compute = ComputeOption,
    no_track: bool = NoTrackOption,
    as_json: bool = JsonOption,
) -> None:
    """Recommend for a public medical dataset described by a card shipped in the package,
    then show what the other compute regime's runs suggest (shortlist only, no LLM)."""
    card = example_card(example)
    stderr.print(f"demo: recommending for the bundled card {card.name}")
    rec = _run(card, None, llm, kb, seed, False, _regime(compute), track=not no_track)
    others = _other_regimes(card, rec, kb, seed)
    doc = {**rec.model_dump(mode="json"), "other_regimes": others}

    def show(console: Console) -> None:
        render(rec, console)
        for other in others:
            render_regime(other, console)

    emit(doc, as_json, show)
    not_recorded(rec)


def _other_regimes(card: Path, rec: Any, kb: Path | None, seed: int) -> list[dict[str, Any]]:
    """Previews of the regimes the recommendation did not use (those the KB holds runs of)."""
    # Imported here: the meta-learner (xgboost, faiss) only loads when the demo runs.
    from metallmix.regimes import preview, regime_shortlist

    out: list[dict[str, Any]] = []
    for regime in REGIMES:
        if regime == rec.compute:
            continue
        stderr.print(f"demo: shortlisting the {regime} regime (meta-learner only, no LLM)")
        try:
            shortlist = regime_shortlist(rec.meta_features or card, regime, kb=kb, n=3, seed=seed)
        except KnowledgeBaseError as exc:
            out.append({"compute": regime, "unavailable": str(exc)})
            continue
        out.append(preview(shortlist))
    return out


def render_regime(preview: dict[str, Any], console: Console) -> None:
    """Another regime's top candidates with their predictions and the baselines."""
    regime = str(preview["compute"])
    if "unavailable" in preview:
        console.print(f"{regime.upper()} regime: {escape(str(preview['unavailable']))}")
        return
    label = METRIC_LABEL.get(preview["metric"], preview["metric"])
    majority = preview["majority_accuracy"]
    title = (
        f"{regime.upper()} regime - {preview['regime']}: meta-learner's top "
        f"{len(preview['candidates'])} (no LLM); chance {preview['chance_level']:.1%}"
        + (f", majority class {majority:.1%}" if majority is not None else "")
    )
    table = Table(title=escape(title))
    for column in ("model", f"expected {label}", "interval", "lr", "batch", "epochs/time"):
        table.add_column(column)
    for c in preview["candidates"]:
        hp = c["hyperparameters"]
        secs = c["expected_train_seconds"]
        table.add_row(
            f"{c['model']}{' (pretrained)' if c['pretrained'] else ''}",
            f"{c['expected_score']:.1%}",
            f"[{c['score_low']:.1%}, {c['score_high']:.1%}]",
            f"{hp['lr']:.3g}" if "lr" in hp else "-",
            str(hp.get("batch_size", "-")),
            f"{hp.get('epochs', '-')} / {secs:.0f} s" if secs is not None else "-",
        )
    console.print(table)
    if preview["metric_note"]:
        console.print(f"metric: {escape(str(preview['metric_note']))}")
    for c in preview["candidates"][:1]:
        if c["baseline_warning"]:
            console.print(f"[yellow]warning ({c['model']}): {escape(c['baseline_warning'])}[/]")


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend_cmd)
    app.command("demo")(demo_cmd)
