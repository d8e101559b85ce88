"""The evidence the LLM nodes see, with short ids, and the numbers it contains.

The recommender is shown the shortlist with request-local ids: candidates ``c1..``, SHAP
facts ``f1..`` (listed under the candidate they belong to) and similar past runs ``r1..``.
Its answer names ids only (the grammar built from :func:`answer_schema` allows exactly this
request's ids), and code renders every number of what it cites (:func:`render_explanation`):
a small model picks and connects, it never copies a number. Short ids also keep the prompt
and the generated JSON short: a KB run id is ~20 tokens, ``r1`` is one.

Percentages are rendered with one decimal, hyperparameters with ``:g``; :func:`numbers_in`
and :func:`grounded` read numbers back with the precision they were written with.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from metallmix.agents.schemas import Confidence, LLMChoice
from metallmix.tools.meta.contracts import (
    Candidate,
    ShapFact,
    Shortlist,
    SimilarRun,
    ood_note,
)
from metallmix.tools.meta.search_space import hp_values

MAX_SIMILAR = 3  # similar runs shown to the LLM
FACTS_PER_CANDIDATE = 2
MAX_CHOICES = 3  # candidates the LLM chooses among (the shortlist's best-scored)
MAX_RATIONALE_CHARS = 280
MIN_RATIONALE_CHARS = 20
# Interval width (accuracy points) at or under which an interval is "narrow"; above
# WIDE_POINTS confidence is "low". A past run "agrees" within AGREE_POINTS of the prediction.
NARROW_POINTS = 10.0
WIDE_POINTS = 20.0
AGREE_POINTS = 10.0


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


def interval_width(c: Candidate) -> float:
    """Width of the 10-90% interval in accuracy points."""
    return (c.accuracy_high - c.accuracy_low) * 100.0


def is_narrow(c: Candidate) -> bool:
    return interval_width(c) <= NARROW_POINTS + 1e-9


def run_score(r: SimilarRun) -> tuple[float | None, str]:
    """A past run's score and its metric: validation balanced accuracy where the run
    recorded it (what the meta-learner predicts), else validation accuracy."""
    if r.val_balanced_accuracy is not None:
        return r.val_balanced_accuracy, "balanced_accuracy"
    return r.val_accuracy, "accuracy"


def metric_words(metric: str) -> str:
    """'balanced_accuracy' -> 'balanced accuracy'."""
    return metric.replace("_", " ")


def run_result(r: SimilarRun) -> str:
    """'validation balanced accuracy 85.9%': the run's number in its own metric."""
    value, metric = run_score(r)
    return f"validation {metric_words(metric)} {pct(value)}"


def run_key(r: SimilarRun) -> tuple[object, ...]:
    """Runs with the same key are near-duplicates (same configuration, dataset and score):
    cited once, as 'N runs'."""
    value, metric = run_score(r)
    hps = r.hyperparameters.model_dump_json()
    return (r.model, r.dataset, metric, None if value is None else round(value, 3), hps)


def runs_agree(c: Candidate, runs: list[SimilarRun]) -> bool:
    """At least one past run reached a score within AGREE_POINTS of the prediction."""
    return any(
        run_score(r)[0] is not None
        and abs((run_score(r)[0] or 0.0) - c.predicted_accuracy) * 100 <= AGREE_POINTS
        for r in runs
    )


def confidence_for(c: Candidate, runs: list[SimilarRun]) -> Confidence:
    """The one rule for confidence, used by the recommender, the fallback and the judge:
    high = narrow interval and a past run that agrees; low = wide interval or no past run."""
    width = interval_width(c)
    if not runs or width > WIDE_POINTS:
        return "low"
    if width <= NARROW_POINTS and runs_agree(c, runs):
        return "high"
    return "medium"


def candidate_line(
    c: Candidate, keys: tuple[str, ...] | None = KEY_HPS, metric: str = "accuracy"
) -> str:
    start = "pretrained" if c.pretrained else "from scratch"
    return (
        f"- {c.candidate_id}: {c.model} ({start}); "
        f"{hp_text(dict(hp_values(c.hyperparameters)), keys)}"
        f"; predicted {metric_words(metric)} {pct(c.predicted_accuracy)} (interval "
        f"{pct(c.accuracy_low)} to "
        f"{pct(c.accuracy_high)}); training {seconds(c.predicted_seconds)}"
    )


def run_line(r: SimilarRun) -> str:
    return (
        f"- {r.run_id}: dataset {r.dataset}, {r.model}, {run_result(r)}, "
        f"similarity {r.similarity:.2f}"
    )


def best_run(shortlist: Shortlist) -> SimilarRun | None:
    scored = [r for r in shortlist.similar_runs[:MAX_SIMILAR] if run_score(r)[0] is not None]
    return max(scored, key=lambda r: run_score(r)[0] or 0.0) if scored else None


def best_candidate(shortlist: Shortlist) -> Candidate:
    return max(shortlist.candidates, key=lambda c: c.score)


def ranked_candidates(shortlist: Shortlist) -> list[Candidate]:
    return sorted(shortlist.candidates, key=lambda c: -c.score)


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


def top_facts(shortlist: Shortlist, candidate_id: str, n: int) -> list[ShapFact]:
    ranked = sorted(shortlist.facts_for(candidate_id), key=lambda f: -abs(f.effect_points))
    return ranked[:n]


def fact_lines(shortlist: Shortlist, candidate_id: str, n: int) -> list[str]:
    return [f"- [{candidate_id}] {f.sentence}" for f in top_facts(shortlist, candidate_id, n)]


class Evidence(BaseModel):
    """One request's evidence: what the LLM may choose and cite, under short ids. Built once
    per recommendation (the graph's ``evidence`` node) and read by the recommender and the
    judge, so both see the same text."""

    model_config = ConfigDict(frozen=True)

    name: str
    shortlist: Shortlist
    candidates: list[Candidate]
    facts: dict[str, ShapFact] = Field(default_factory=dict)  # "f1" -> fact
    runs: dict[str, SimilarRun] = Field(default_factory=dict)  # "r1" -> run
    # "r1" -> its near-duplicates (same configuration, dataset and score), cited with it
    same: dict[str, list[SimilarRun]] = Field(default_factory=dict)

    def cited(self, run_id: str) -> list[SimilarRun]:
        """The run behind a short id and its near-duplicates: one citation, 'N runs'."""
        return [self.runs[run_id], *self.same.get(run_id, [])]

    @property
    def missing_own_runs(self) -> str | None:
        """The model with no past run on a similar dataset when one candidate is explained
        (the evidence says so rather than let other models' runs stand in silently)."""
        if len(self.candidates) != 1:
            return None
        model = self.candidates[0].model
        if any(r.model == model for r in self.shortlist.similar_runs):
            return None
        return model

    def facts_of(self, candidate_id: str) -> list[str]:
        return [fid for fid, f in self.facts.items() if f.candidate_id == candidate_id]

    def candidate_block(self, c: Candidate) -> str:
        """~50 tokens a candidate and ~25 a fact (measured with the Qwen tokenizer)."""
        start = ", pretrained" if c.pretrained else ""
        hps = hp_text(dict(hp_values(c.hyperparameters)))
        conf = confidence_for(c, list(self.runs.values()))
        lines = [
            f"{c.candidate_id}: {c.model}{start}, {hps}. Predicted "
            f"{metric_words(self.shortlist.metric)} "
            f"{pct(c.predicted_accuracy)} (interval {pct(c.accuracy_low)} to "
            f"{pct(c.accuracy_high)}, {conf} confidence), training {seconds(c.predicted_seconds)}."
        ]
        lines += [
            f"  {fid}: {short_fact(self.facts[fid])}" for fid in self.facts_of(c.candidate_id)
        ]
        return "\n".join(lines)

    @property
    def dataset(self) -> str:
        line = dataset_line(self.name, self.shortlist)
        if self.shortlist.ood:  # outside the KB: say so where the LLM reads the dataset
            line += f"\nOUT OF RANGE (ood): {ood_note(self.shortlist.ood_reasons)}"
        return line

    @property
    def text(self) -> str:
        """The prompt's evidence block (its token count is logged with each call)."""
        runs = []
        for rid, r in self.runs.items():
            n = len(self.cited(rid))
            runs.append(
                f"{rid}: {r.model} on {r.dataset}, {run_result(r)}, similarity "
                f"{r.similarity:.2f}"
                + (f" ({n} runs, same configuration and score)" if n > 1 else "")
            )
        missing = self.missing_own_runs
        if missing:
            runs.append(f"No past run of {missing} on a similar dataset in the knowledge base.")
        basis = self.shortlist.rank_basis or "best meta-learner ranking first"
        return "\n".join(
            [
                f"Dataset: {self.dataset}",
                "",
                f"Candidates ({basis}), with SHAP facts (effect on the predicted score):",
                *[self.candidate_block(c) for c in self.candidates],
                "",
                "Past runs on similar datasets:",
                *(runs or ["none in the knowledge base"]),
            ]
        )


def short_fact(f: ShapFact) -> str:
    """A SHAP fact in fewer tokens than its sentence, for the prompt."""
    usual = "" if f.reference is None or f.reference == f.value else f" (KB usual {f.reference})"
    return f"{f.feature} {f.value}{usual}: {f.effect_points:+.1f} pts"


def render_evidence(
    name: str,
    shortlist: Shortlist,
    *,
    candidates: list[Candidate] | None = None,
    n_facts: int = FACTS_PER_CANDIDATE,
    n_runs: int = MAX_SIMILAR,
) -> Evidence:
    """Evidence over ``candidates`` (default: the whole shortlist, best score first), each
    with its ``n_facts`` largest SHAP facts, and the ``n_runs`` most similar past runs."""
    chosen = candidates if candidates is not None else ranked_candidates(shortlist)
    facts: dict[str, ShapFact] = {}
    for c in chosen:
        for f in top_facts(shortlist, c.candidate_id, n_facts):
            facts[f"f{len(facts) + 1}"] = f
    pool = list(shortlist.similar_runs)
    if len(chosen) == 1:  # runs of the candidate's own configuration, then model, first
        own = chosen[0]
        same_hp = own.hyperparameters.model_dump_json()
        pool.sort(
            key=lambda r: (r.model != own.model, r.hyperparameters.model_dump_json() != same_hp)
        )
    else:
        pool = pool[:n_runs]
    groups: dict[tuple[object, ...], list[SimilarRun]] = {}
    for r in pool:
        groups.setdefault(run_key(r), []).append(r)
    kept = list(groups.values())[:n_runs]
    runs = {f"r{i + 1}": g[0] for i, g in enumerate(kept)}
    same = {f"r{i + 1}": g[1:] for i, g in enumerate(kept) if len(g) > 1}
    return Evidence(
        name=name, shortlist=shortlist, candidates=list(chosen), facts=facts, runs=runs, same=same
    )


# ----------------------------------------------------------------- the answer's grammar
def answer_schema(ev: Evidence) -> type[BaseModel]:
    """The JSON schema the grammar enforces: one branch per candidate, each allowing only
    that candidate's fact ids and this request's run ids, then a short rationale.

    ``candidate_id`` comes first so the branch (and with it the allowed fact ids) is fixed
    before anything is cited; the rationale comes last, after the choice is made.
    """
    run_ids = tuple(ev.runs)
    branches: list[type[BaseModel]] = []
    for c in ev.candidates:
        fact_ids = tuple(ev.facts_of(c.candidate_id))
        fields: dict[str, Any] = {
            "candidate_id": (Literal[(c.candidate_id,)], ...),
            "facts": _ids_field(fact_ids),
            "runs": _ids_field(run_ids),
            "rationale": (
                str,
                Field(min_length=MIN_RATIONALE_CHARS, max_length=MAX_RATIONALE_CHARS),
            ),
        }
        branches.append(
            create_model(
                f"Answer_{_safe(c.candidate_id)}",
                __config__=ConfigDict(extra="forbid"),
                **fields,
            )
        )
    if len(branches) == 1:
        return branches[0]
    union: Any = branches[0]
    for branch in branches[1:]:
        union = union | branch
    return RootModel[union]


def _ids_field(ids: tuple[str, ...]) -> tuple[Any, Any]:
    if not ids:
        return (list[str], Field(default_factory=list, max_length=0))
    return (list[Literal[ids]], Field(min_length=1, max_length=2))  # type: ignore[valid-type]


def _safe(text: str) -> str:
    return re.sub(r"\W", "_", text)


def to_choice(answer: BaseModel) -> LLMChoice:
    """The validated answer (any branch) as the plain :class:`LLMChoice`."""
    inner = answer.root if isinstance(answer, RootModel) else answer
    data = inner.model_dump()
    return LLMChoice(
        candidate_id=str(data["candidate_id"]),
        facts=list(dict.fromkeys(data.get("facts") or [])),
        runs=list(dict.fromkeys(data.get("runs") or [])),
        rationale=whole_sentences(str(data.get("rationale", ""))),
    )


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def whole_sentences(text: str) -> str:
    """The text up to its last full sentence.

    The grammar closes the rationale at ``MAX_RATIONALE_CHARS`` even mid-sentence, and a
    sentence cut off after "It" reads as a broken answer; what was said in full is kept. A
    text with no full sentence is returned as it is (the judge then sees all of it)."""
    text = text.strip()
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] == len(text):
        return text
    return text[: ends[-1]].strip()


# ----------------------------------------------------------------- an example from this evidence
# How a SHAP fact's feature reads in words; numeric features compare as larger/smaller (or
# higher/lower for rates) than the KB's usual value, which is what the fact states.
FEATURE_WORDS = {
    "lr": "learning rate",
    "batch_size": "batch size",
    "image_size": "image size",
    "epochs": "number of epochs",
    "weight_decay": "weight decay",
    "label_smoothing": "label smoothing",
    "dropout": "dropout",
    "finetune": "fine-tuning",
    "optimizer": "optimizer",
    "scheduler": "learning-rate schedule",
    "augmentation": "augmentation",
    "pretrained": "pretrained start",
    "model": "architecture",
}
_RATE_FEATURES = frozenset({"lr", "weight_decay", "label_smoothing", "dropout"})


def fact_words(f: ShapFact) -> str:
    """One SHAP fact as digit-free words that say only what the fact says: the direction of
    the candidate's value against the KB's usual one, and whether it helps or hurts."""
    name = FEATURE_WORDS.get(f.feature, f.feature.replace("_", " "))
    verb = "helps" if f.effect_points > 0 else "hurts"
    try:
        mine, usual = float(f.value), float(f.reference or "nan")
    except ValueError:
        mine = usual = math.nan
    if not math.isnan(mine) and not math.isnan(usual) and mine != usual:
        more, less = ("higher", "lower") if f.feature in _RATE_FEATURES else ("larger", "smaller")
        return f"a {more if mine > usual else less} {name} than usual {verb}"
    value = f.value.strip().lower()
    if f.feature == "model" or not value or re.search(r"\d", value):
        return f"its {name} {verb}"
    if value in {"none", "no", "false"}:
        return f"no {name} {verb}"
    if value == "true":
        return f"the {name} {verb}"
    return f"{value.replace('_', ' ')} {name} {verb}"


def example_rationale(ev: Evidence, candidate: Candidate) -> str:
    """A correct rationale for ``candidate`` built by code from this request's evidence.

    The prompt shows it so that a small model has a pattern whose every word is true of
    *this* request: pasting it can never name another model or misstate a fact, unlike a
    fixed worked example (issue 24: the 1.5B model pasted the prompt's example with the
    model name swapped). Digit-free, so it adds no number the judge must attribute."""
    modality = str(getattr(ev.shortlist.meta_features, "modality", "") or "").strip()
    where = (
        f"For this {modality} dataset"
        if modality and modality != "unknown" and not re.search(r"\d", modality)
        else "For this dataset"
    )
    start = "a pretrained start" if candidate.pretrained else "training from scratch"
    parts = [fact_words(ev.facts[fid]) for fid in ev.facts_of(candidate.candidate_id)[:2]]
    said = f"{where}, {start} is used"
    if parts:
        said += "; " + " and ".join(parts)
    return said + "."


# ----------------------------------------------------------------- rendering by code
def fact_clause(f: ShapFact) -> str:
    return f.sentence


def run_sentence(r: SimilarRun, duplicates: list[SimilarRun] | None = None) -> str:
    """One citation per configuration: near-duplicates are cited together as 'N runs'."""
    group = [r, *(duplicates or [])]
    value, metric = run_score(r)
    ids = " ".join(f"[run {x.run_id}]" for x in group)
    # the count in words: a digit here would be a number the judge must attribute
    count = COUNT_WORDS.get(len(group), str(len(group)))
    head = f"Past run {ids}" if len(group) == 1 else f"{count.capitalize()} past runs {ids}"
    each = "" if len(group) == 1 else " each"
    return (
        f"{head}: {r.model} on {r.dataset} reached {pct(value)} validation "
        f"{metric_words(metric)}{each} (dataset similarity {r.similarity:.2f})."
    )


COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}


def group_runs(runs: list[SimilarRun]) -> list[list[SimilarRun]]:
    """Runs grouped by :func:`run_key`, in first-seen order."""
    groups: dict[tuple[object, ...], list[SimilarRun]] = {}
    for r in runs:
        groups.setdefault(run_key(r), []).append(r)
    return list(groups.values())


def render_explanation(
    c: Candidate,
    facts: list[ShapFact],
    runs: list[SimilarRun],
    rationale: str,
    confidence: Confidence,
    metric: str = "accuracy",
    *,
    missing_own_runs: bool = False,
) -> str:
    """The explanation: the LLM's connecting words, then every number, written by code.

    ``metric`` names what the prediction is in (the shortlist's metric, e.g. balanced accuracy
    for medical runs), so the words never call a balanced-accuracy prediction "accuracy"."""
    start = "pretrained" if c.pretrained else "from scratch"
    band = "narrow" if is_narrow(c) else "wide"
    parts = []
    words = rationale.strip()
    if words:
        parts.append(words if words[-1] in ".!?" else words + ".")
    parts.append(
        f"{c.model} ({start}) has a predicted validation {metric_words(metric)} of "
        f"{pct(c.predicted_accuracy)}, interval {pct(c.accuracy_low)} to "
        f"{pct(c.accuracy_high)} ({band}; {confidence} confidence), and an expected training "
        f"time of {seconds(c.predicted_seconds)}."
    )
    if facts:
        parts.append("SHAP: " + "; ".join(fact_clause(f) for f in facts) + ".")
    parts += [run_sentence(g[0], g[1:]) for g in group_runs(runs)]
    if missing_own_runs:
        parts.append(
            f"No past run of {c.model} on a similar dataset is in the knowledge base"
            + ("; the cited runs are of other models." if runs else ".")
        )
    return " ".join(parts)


# ----------------------------------------------------------------- reading numbers back
_NUMBER = re.compile(r"(?<![\w.])([-+]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?([eE][-+]?\d+)?")
_CITATION = re.compile(r"\[\s*run[\s:#]*([^\]\s,;]+)\s*\]", re.IGNORECASE)


def scrub(text: str, identifiers: list[str]) -> str:
    """Remove identifiers (run ids, model names, candidate ids) so their digits are not read
    as numbers, and glue ``word-12`` into one token for the same reason."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        if ident:
            text = re.sub(rf"(?<![\w-]){re.escape(ident)}(?![\w])", " ", text)
    return re.sub(r"(?<![0-9][eE])(?<=[A-Za-z_])-(?=\d)", "_", text)


@dataclass(frozen=True)
class Number:
    """A number as written: its value (unsigned), the rounding step its precision implies
    and the sign written before it ('+', '-' or '')."""

    text: str
    value: float
    step: float
    sign: str = ""


def numbers_in(text: str) -> list[Number]:
    out = []
    for match in _NUMBER.finditer(text):
        sign = match.group(1) or ""
        integer, frac, exp = match.group(2), match.group(3) or "", match.group(4) or ""
        raw = integer.replace(",", "") + frac + exp
        value = float(raw)
        decimals = len(frac) - 1 if frac else 0
        step = 10.0 ** (-decimals)
        if exp:
            step *= 10.0 ** int(exp[1:])
        out.append(Number(match.group(0).lstrip("+-"), value, step, sign))
    return out


def citations(text: str) -> list[str]:
    """Run ids cited as ``[run ID]``."""
    return _CITATION.findall(text)


def grounded(number: Number, evidence: list[float], *, transform: bool = True) -> bool:
    """True when ``number`` equals an evidence value (or, with ``transform``, its
    %/fraction/minutes form) up to the rounding its written precision allows."""
    tol = number.step / 2 + 1e-9
    for v in evidence:
        forms = (v, v * 100, v / 100, v / 60, v * 60) if transform else (v,)
        for form in forms:
            if abs(number.value - abs(form)) <= tol or math.isclose(
                number.value, abs(form), rel_tol=1e-6
            ):
                return True
    return False


def evidence_values(ev: Evidence, shortlist: Shortlist) -> list[float]:
    """Every number the LLM saw, plus the raw values behind the rendered ones and every
    shortlisted candidate's and fact's numbers as the evidence renders them (the LLM may
    have been shown only the top candidates)."""
    rendered = [ev.text]
    for c in shortlist.candidates:
        rendered.append(
            f"{hp_text(dict(hp_values(c.hyperparameters)))}; {pct(c.predicted_accuracy)} "
            f"{pct(c.accuracy_low)} {pct(c.accuracy_high)}; {seconds(c.predicted_seconds)}"
        )
    rendered += [short_fact(f) for f in shortlist.facts]
    text = "\n".join(rendered)
    values = [n.value for n in numbers_in(scrub(text, identifiers(shortlist)))]
    for c in shortlist.candidates:
        values += [c.predicted_accuracy, c.accuracy_low, c.accuracy_high, c.score]
        if c.predicted_seconds is not None:
            values.append(c.predicted_seconds)
    for f in shortlist.facts:
        values.append(f.effect_points)
        for text in (f.value, f.reference or ""):
            with contextlib.suppress(ValueError):
                values.append(float(text.replace(",", "")))
    for r in shortlist.similar_runs:
        values += [
            v
            for v in (r.val_accuracy, r.val_balanced_accuracy, r.test_accuracy, r.train_seconds)
            if v is not None
        ]
        values.append(r.similarity)
    # counts a sentence may use ("the top 3 candidates", "2 similar runs")
    values += list(range(len(shortlist.candidates) + len(shortlist.similar_runs) + 1))
    return values


def identifiers(shortlist: Shortlist) -> list[str]:
    ids = [c.candidate_id for c in shortlist.candidates] + [c.model for c in shortlist.candidates]
    ids += [r.run_id for r in shortlist.similar_runs] + [r.model for r in shortlist.similar_runs]
    ids += [r.dataset for r in shortlist.similar_runs]
    ids += [f.value for f in shortlist.facts if f.feature == "model"]
    n = len(shortlist.facts) + len(shortlist.similar_runs) + len(shortlist.candidates) + 1
    ids += [f"f{i}" for i in range(1, n)] + [f"r{i}" for i in range(1, n)]
    return ids
