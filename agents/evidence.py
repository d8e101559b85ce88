"""The evidence both LLM nodes see, rendered once, and the numbers it contains.

The recommender's prompt and the judge's number check are built from the same text: a
number in an explanation is grounded exactly when it appears in (or converts from) a number
the LLM was shown. Percentages are rendered with one decimal, hyperparameters with ``:g``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from metallmix.tools.meta.contracts import Candidate, Shortlist, SimilarRun
from metallmix.tools.meta.search_space import hp_values

MAX_SIMILAR = 5  # similar runs shown to the LLM


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def seconds(value: float | None) -> str:
    if value is None:
        return "unknown time"
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.1f} min"


KEY_HPS = ("lr", "batch_size", "optimizer", "epochs", "image_size", "augmentation")


def hp_text(values: dict[str, object], keys: tuple[str, ...] | None = KEY_HPS) -> str:
    """Hyperparameters as ``name=value``; floats to 3 significant digits (short prompts)."""
    parts = []
    for name, value in values.items():
        if value is None or (keys is not None and name not in keys):
            continue
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(parts)


def candidate_line(c: Candidate, keys: tuple[str, ...] | None = KEY_HPS) -> str:
    start = "pretrained" if c.pretrained else "from scratch"
    return (
        f"- {c.candidate_id}: {c.model} ({start}); "
        f"{hp_text(dict(hp_values(c.hyperparameters)), keys)}"
        f"; predicted accuracy {pct(c.predicted_accuracy)} (interval {pct(c.accuracy_low)} to "
        f"{pct(c.accuracy_high)}); training {seconds(c.predicted_seconds)}"
    )


def run_line(r: SimilarRun) -> str:
    acc = pct(r.val_accuracy)
    return (
        f"- {r.run_id}: dataset {r.dataset}, {r.model}, validation accuracy {acc}, "
        f"similarity {r.similarity:.2f}"
    )


def best_run(shortlist: Shortlist) -> SimilarRun | None:
    scored = [r for r in shortlist.similar_runs[:MAX_SIMILAR] if r.val_accuracy is not None]
    return max(scored, key=lambda r: r.val_accuracy or 0.0) if scored else None


def best_candidate(shortlist: Shortlist) -> Candidate:
    return max(shortlist.candidates, key=lambda c: c.score)


def dataset_line(name: str, shortlist: Shortlist) -> str:
    mf = shortlist.meta_features
    parts = [
        name,
        f"{mf.n_images} training images",
        f"{mf.n_classes} classes",
        f"median resolution {mf.resolution_h:g}x{mf.resolution_w:g} px",
        f"{mf.channels} channel(s)",
        f"modality {mf.modality}",
    ]
    if mf.imbalance_ratio is not None:
        parts.append(f"imbalance ratio {mf.imbalance_ratio:.1f}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Evidence:
    """The rendered evidence sections of one shortlist."""

    dataset: str
    candidates: str
    facts: str
    similar: str
    best_candidate: str
    best_run: str

    @property
    def text(self) -> str:
        return "\n".join(
            [
                self.dataset,
                self.candidates,
                self.facts,
                self.similar,
                self.best_candidate,
                self.best_run,
            ]
        )


def fact_lines(shortlist: Shortlist, candidate_id: str, n: int) -> list[str]:
    ranked = sorted(shortlist.facts_for(candidate_id), key=lambda f: -abs(f.effect_points))
    return [f"- [{candidate_id}] {f.sentence}" for f in ranked[:n]]


def render_evidence(name: str, shortlist: Shortlist) -> Evidence:
    """Evidence for the prompt (~700 tokens): the shortlist with its key hyperparameters, the
    top two candidates' largest SHAP facts, the most similar past runs."""
    ranked = sorted(shortlist.candidates, key=lambda c: -c.score)
    facts: list[str] = []
    for c, n in zip(ranked[:2], (3, 2), strict=False):
        facts += fact_lines(shortlist, c.candidate_id, n)
    best = best_candidate(shortlist)
    run = best_run(shortlist)
    return Evidence(
        dataset=dataset_line(name, shortlist),
        candidates="\n".join(candidate_line(c) for c in ranked),
        facts="\n".join(facts) or "- none available",
        similar="\n".join(run_line(r) for r in shortlist.similar_runs[:MAX_SIMILAR])
        or "- none in the KB",
        best_candidate=(
            f"{best.candidate_id} ({best.model}, predicted {pct(best.predicted_accuracy)})"
        ),
        best_run=(
            f"{run.run_id} ({run.model} on {run.dataset}, {pct(run.val_accuracy)})"
            if run
            else "none"
        ),
    )


_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?([eE][-+]?\d+)?")
_CITATION = re.compile(r"\[\s*run[\s:#]*([^\]\s,;]+)\s*\]", re.IGNORECASE)


def scrub(text: str, identifiers: list[str]) -> str:
    """Remove identifiers (run ids, model names, candidate ids) so their digits are not read
    as numbers, and glue ``word-12`` into one token for the same reason."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        if ident:
            text = text.replace(ident, " ")
    return re.sub(r"(?<![0-9][eE])(?<=[A-Za-z_])-(?=\d)", "_", text)


@dataclass(frozen=True)
class Number:
    """A number as written: its value and the rounding step its precision implies."""

    text: str
    value: float
    step: float


def numbers_in(text: str) -> list[Number]:
    out = []
    for match in _NUMBER.finditer(text):
        integer, frac, exp = match.group(1), match.group(2) or "", match.group(3) or ""
        raw = integer.replace(",", "") + frac + exp
        value = float(raw)
        decimals = len(frac) - 1 if frac else 0
        step = 10.0 ** (-decimals)
        if exp:
            step *= 10.0 ** int(exp[1:])
        out.append(Number(match.group(0), value, step))
    return out


def citations(text: str) -> list[str]:
    """Run ids cited as ``[run ID]``."""
    return _CITATION.findall(text)


def grounded(number: Number, evidence: list[float]) -> bool:
    """True when ``number`` equals an evidence value (or its %/fraction/minutes form) up to
    the rounding its written precision allows."""
    tol = number.step / 2 + 1e-9
    for v in evidence:
        for form in (v, v * 100, v / 100, v / 60, v * 60):
            if abs(number.value - abs(form)) <= tol or math.isclose(
                number.value, abs(form), rel_tol=1e-6
            ):
                return True
    return False


def evidence_values(evidence: Evidence, shortlist: Shortlist) -> list[float]:
    """Every number the LLM saw, plus the raw values behind the rendered ones."""
    values = [n.value for n in numbers_in(scrub(evidence.text, identifiers(shortlist)))]
    for c in shortlist.candidates:
        values += [c.predicted_accuracy, c.accuracy_low, c.accuracy_high, c.score]
        if c.predicted_seconds is not None:
            values.append(c.predicted_seconds)
    for f in shortlist.facts:
        values.append(f.effect_points)
    for r in shortlist.similar_runs:
        values += [v for v in (r.val_accuracy, r.test_accuracy, r.train_seconds) if v is not None]
    # counts a sentence may use ("the top 3 candidates", "2 similar runs")
    values += list(range(len(shortlist.candidates) + len(shortlist.similar_runs) + 1))
    return values


def identifiers(shortlist: Shortlist) -> list[str]:
    ids = [c.candidate_id for c in shortlist.candidates] + [c.model for c in shortlist.candidates]
    ids += [r.run_id for r in shortlist.similar_runs] + [r.model for r in shortlist.similar_runs]
    ids += [r.dataset for r in shortlist.similar_runs]
    return ids
