"""Does each number belong to what it is written next to? Do the words match the confidence?

``numbers_grounded`` only asks whether a number appears somewhere in the evidence; an answer
can still credit the +3.5 points of ``model=convnext_atto`` to the learning rate. Here every
evidence number is an :class:`Item` with the names that identify it (its hyperparameter,
model, meta-feature, run id...). A number in the text is attributed when the clause it sits
in (else its sentence) names one of the items carrying that value; naming only *other*
things is a misattribution; naming nothing is unattributed. Words about certainty ("narrow
interval", "high confidence", "similar runs agree", "X is similar to Y") are checked against
the interval width, the confidence field and the numbers they compare.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from metallmix.agents.evidence import (
    AGREE_POINTS,
    Number,
    confidence_for,
    grounded,
    identifiers,
    interval_width,
    is_narrow,
    numbers_in,
    scrub,
)
from metallmix.tools.meta.contracts import Candidate, ShapFact, Shortlist, SimilarRun

# Names a writer uses for a feature; every entry also matches with spaces for underscores.
ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("lr", "learning rate", "learning-rate", "step size"),
    "batch_size": ("batch_size", "batch size", "batch"),
    "weight_decay": ("weight_decay", "weight decay", "l2"),
    "epochs": ("epochs", "epoch"),
    "image_size": (
        "image_size",
        "image size",
        "input size",
        "input resolution",
        "px inputs",
        "px input",
        "pixel inputs",
    ),
    "label_smoothing": ("label_smoothing", "label smoothing"),
    "dropout": ("dropout",),
    "optimizer": ("optimizer", "optimiser"),
    "scheduler": ("scheduler", "schedule"),
    "augmentation": ("augmentation", "augmentations", "augment"),
    "model": ("model", "architecture", "backbone", "network"),
    "pretrained": ("pretrained", "pre-trained", "pretraining", "from scratch"),
    "n_images": ("n_images", "images", "training images", "dataset size"),
    "n_classes": ("n_classes", "classes"),
    "imbalance_ratio": ("imbalance_ratio", "imbalance"),
    "resolution_h": ("resolution", "px", "pixels"),
    "resolution_w": ("resolution", "px", "pixels"),
    "channels": ("channels", "channel"),
}
# Words that point at a kind of number without naming a specific thing.
PREDICTION = ("predicted", "prediction", "expected", "expect", "estimate", "forecast")
INTERVAL = ("interval", "range", "between", "bounds")
RUN_WORDS = ("run", "runs", "past", "previous", "earlier", "reached", "achieved", "history")
TIME_WORDS = ("time", "seconds", "second", "s", "min", "minutes", "train", "training")
COUNT_WORDS = ("candidates", "candidate", "runs", "facts", "options", "top", "configurations")
# "the model" also means the candidate as a whole: its prediction, its time, its past runs.
MODEL_WORDS = frozenset(ALIASES["model"])
PERCENT = (1.0, 100.0)  # a fraction written as such or as a percentage
SECONDS = (1.0, 1 / 60)  # seconds or minutes


@dataclass(frozen=True)
class Item:
    """One evidence number and the names that identify it."""

    label: str  # for messages, e.g. "the SHAP effect of model=convnext_atto"
    value: float
    anchors: frozenset[str]  # specific names (features, models, ids)
    generic: frozenset[str] = frozenset()  # kind words ("predicted", "interval")
    signed: bool = False  # a SHAP effect: a written '+'/'-' must agree with its sign
    forms: tuple[float, ...] = (1.0,)  # how it may be written: x1, as percent (x100), ...

    def matches(self, number: Number) -> bool:
        return grounded(number, [self.value * f for f in self.forms], transform=False)


def _terms(*names: str) -> frozenset[str]:
    out: set[str] = set()
    for name in names:
        name = name.strip().lower()
        if not name:
            continue
        out.add(name)
        out.add(name.replace("_", " "))
        out.update(ALIASES.get(name, ()))
    return frozenset(out)


def evidence_items(shortlist: Shortlist) -> list[Item]:
    """Every number of the shortlist with what names it."""
    items: list[Item] = []
    for c in shortlist.candidates:
        who = _terms(c.model) | {c.candidate_id.lower()} | MODEL_WORDS
        items.append(
            Item(
                f"the predicted accuracy of {c.model}",
                c.predicted_accuracy,
                who,
                frozenset(PREDICTION) | {"accuracy"},
                forms=PERCENT,
            )
        )
        for bound, value in (("low", c.accuracy_low), ("high", c.accuracy_high)):
            items.append(
                Item(
                    f"the {bound} end of {c.model}'s interval",
                    value,
                    who,
                    frozenset(INTERVAL + PREDICTION) | {"to"},
                    forms=PERCENT,
                )
            )
        if c.predicted_seconds is not None:
            items.append(
                Item(
                    f"{c.model}'s expected training time",
                    c.predicted_seconds,
                    who,
                    frozenset(TIME_WORDS),
                    forms=SECONDS,
                )
            )
        for name, value in c.hyperparameters.model_dump().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                items.append(Item(f"{name} of {c.model}", float(value), _terms(name)))
    for f in shortlist.facts:
        names = _terms(f.feature)
        if not _is_number(f.value):
            names |= _terms(f.value)
        label = f"the SHAP effect of {f.feature}={f.value}"
        items.append(Item(label, f.effect_points, names, frozenset({"pts", "points"}), True))
        for text in (f.value, f.reference or ""):
            if _is_number(text):
                items.append(
                    Item(f"{f.feature} in a SHAP fact", _to_float(text), _terms(f.feature))
                )
    for r in shortlist.similar_runs:
        who = _terms(r.model, r.dataset) | {r.run_id.lower()} | MODEL_WORDS
        for what, measured in (
            ("validation accuracy", r.val_accuracy),
            ("validation balanced accuracy", r.val_balanced_accuracy),
            ("test accuracy", r.test_accuracy),
            ("training time", r.train_seconds),
        ):
            if measured is not None:
                time = what == "training time"
                items.append(
                    Item(
                        f"the {what} of past run {r.run_id}",
                        measured,
                        who,
                        frozenset(TIME_WORDS if time else RUN_WORDS),
                        forms=SECONDS if time else PERCENT,
                    )
                )
        items.append(
            Item(
                f"the similarity of past run {r.run_id}",
                r.similarity,
                who,
                frozenset({"similarity", "similar"}),
                forms=PERCENT,
            )
        )
    mf = shortlist.meta_features.model_dump()
    for name in (
        "n_images",
        "n_classes",
        "imbalance_ratio",
        "resolution_h",
        "resolution_w",
        "channels",
    ):
        feature = mf.get(name)
        if isinstance(feature, int | float):
            items.append(Item(f"the dataset's {name}", float(feature), _terms(name)))
    n = len(shortlist.candidates) + len(shortlist.similar_runs)
    items += [Item("a count", float(k), frozenset(), frozenset(COUNT_WORDS)) for k in range(n + 1)]
    return items


def _is_number(text: str) -> bool:
    try:
        _to_float(text)
    except ValueError:
        return False
    return True


def _to_float(text: str) -> float:
    return float(text.replace(",", ""))


# ----------------------------------------------------------------- splitting text
_SENTENCE = re.compile(r"(?<=[.!?])\s+")  # decimals have no space after the point
# Clauses: ';', and joining words between two statements (not "80.1% and 88.2%").
_CLAUSE = re.compile(
    r";\s*|\s+(?:and|but|while|whereas|whilst|although)\s+(?![-+]?\d)|,\s+(?=which\b|while\b)",
    re.IGNORECASE,
)


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE.split(text.strip()) if s.strip()]


def clauses(sentence: str) -> list[str]:
    return [c for c in _CLAUSE.split(sentence) if c and c.strip()]


def mentions(text: str, term: str) -> bool:
    """``term`` appears in ``text`` as a whole word (case-insensitive)."""
    return re.search(rf"(?<![\w]){re.escape(term)}(?![\w])", text, re.IGNORECASE) is not None


def _named(text: str, terms: frozenset[str]) -> set[str]:
    return {t for t in terms if mentions(text, t)}


# ----------------------------------------------------------------- the checks
@dataclass(frozen=True)
class Finding:
    number: str
    message: str


def misattributions(
    text: str, shortlist: Shortlist, extra_ids: list[str] | None = None
) -> list[str]:
    """A message per number that is not written next to what it measures."""
    items = evidence_items(shortlist)
    specific: frozenset[str] = frozenset().union(*(i.anchors for i in items))
    ids = [*identifiers(shortlist), *(extra_ids or [])]
    problems: list[str] = []
    for sentence in sentences(text):
        for clause in clauses(sentence):
            for number in numbers_in(scrub(clause, ids)):
                problem = _attribute(number, clause, sentence, items, specific)
                if problem:
                    problems.append(problem)
    return problems


def _attribute(
    number: Number, clause: str, sentence: str, items: list[Item], specific: frozenset[str]
) -> str | None:
    matching = [i for i in items if i.matches(number)]
    if not matching:
        return None  # ungrounded: numbers_grounded reports it
    for scope in (clause, sentence):
        named_here = _named(scope, specific)
        good = [i for i in matching if i.anchors & named_here]
        if good:
            return _sign_problem(number, good)
        if named_here:
            owners = "; ".join(dict.fromkeys(i.label for i in matching if i.anchors))[:200]
            written = f"{number.sign}{number.text}"
            return (
                f"{written} is written next to {', '.join(sorted(named_here))} "
                f"but the evidence gives {written} for {owners or 'something else'}"
            )
        generic = [i for i in matching if not i.anchors and _named(scope, i.generic)]
        generic += [i for i in matching if i.anchors and _named(scope, i.generic)]
        if generic:
            return _sign_problem(number, generic)
    return (
        f"{number.sign}{number.text} is not next to what it measures: name the hyperparameter, "
        "model, past run or prediction it belongs to in the same sentence"
    )


def _sign_problem(number: Number, items: list[Item]) -> str | None:
    if not number.sign:
        return None
    signed = [i for i in items if i.signed]
    if not signed:
        return None
    if any((i.value >= 0) == (number.sign == "+") for i in signed):
        return None
    return f"{number.sign}{number.text}: the evidence gives {signed[0].label} the opposite sign"


_NARROW = re.compile(
    r"\b(narrow|tight|small)\b[^.;]*?\b(interval|range|uncertainty|spread)\b"
    r"|\b(interval|range|uncertainty|spread)\b[^.;]*?\b(narrow|tight|small)\b",
    re.IGNORECASE,
)
_WIDE = re.compile(
    r"\b(wide|broad|large)\b[^.;]*?\b(interval|range|uncertainty|spread)\b"
    r"|\b(interval|range|uncertainty|spread)\b[^.;]*?\b(wide|broad|large)\b",
    re.IGNORECASE,
)
_LEVEL = re.compile(
    r"\b(high|low|medium|moderate|strong|weak)(?:ly)?[\s-]+confiden(?:ce|t)\b"
    r"|\bconfidence\s+(?:is\s+|of\s+|level\s+)?(?:very\s+|quite\s+|fairly\s+)?(high|low|medium|moderate)\b",
    re.IGNORECASE,
)
_CERTAIN = re.compile(
    r"\b(certain(?:ly)?|guarantee[sd]?|definitely|sure to|reliabl[ey]|very confident|"
    r"confidently|we are confident|highly likely|without doubt|no doubt)\b",
    re.IGNORECASE,
)
_UNCERTAIN = re.compile(r"\b(uncertain|not certain|not sure|unsure)\b", re.IGNORECASE)
_AGREE = re.compile(
    r"\b(agree[sd]?|confirm[sed]*|consistent|in line|corroborat\w*)\b", re.IGNORECASE
)
_SIMILAR = re.compile(
    r"\b(similar to|close to|comparable to|in line with|matches|matching|"
    r"consistent with|very similar|almost the same|the same as)\b",
    re.IGNORECASE,
)
_PERCENT = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*%")


def confidence_problems(
    text: str,
    candidate: Candidate,
    confidence: str,
    runs: list[SimilarRun],
    cited_runs: list[SimilarRun],
) -> list[str]:
    """Certainty words against the interval width, the confidence field and the runs."""
    problems: list[str] = []
    rule = confidence_for(candidate, runs)
    width = interval_width(candidate)
    if confidence != rule:
        problems.append(
            f"confidence is {confidence!r} but an interval {width:.1f} points wide"
            f"{' with a past run that agrees' if rule == 'high' else ''} means {rule!r}"
        )
    for sentence in sentences(text):
        if _NARROW.search(sentence) and not is_narrow(candidate):
            problems.append(f"calls the interval narrow but it is {width:.1f} points wide")
        if _WIDE.search(sentence) and is_narrow(candidate):
            problems.append(f"calls the interval wide but it is only {width:.1f} points wide")
        for match in _LEVEL.finditer(sentence):
            said = (match.group(1) or match.group(2) or "").lower()
            said = {"moderate": "medium", "strong": "high", "weak": "low"}.get(said, said)
            if said and said != confidence:
                problems.append(f"says {said} confidence but the confidence is {confidence}")
        if _CERTAIN.search(sentence) and not _UNCERTAIN.search(sentence) and confidence != "high":
            problems.append(f"sounds certain but the confidence is {confidence}")
        if _AGREE.search(sentence) and re.search(r"\bruns?\b", sentence, re.IGNORECASE):
            pool = cited_runs or runs
            if not any(
                r.val_accuracy is not None
                and abs(r.val_accuracy - candidate.predicted_accuracy) * 100 <= AGREE_POINTS
                for r in pool
            ):
                problems.append(
                    "says past runs agree but none reached within "
                    f"{AGREE_POINTS:.0f} points of the predicted accuracy"
                )
        if _SIMILAR.search(sentence):
            values = [float(v) for v in _PERCENT.findall(sentence)]
            if len(values) >= 2 and max(values) - min(values) > AGREE_POINTS / 2:
                problems.append(
                    f"calls {min(values):g}% and {max(values):g}% similar; they differ by "
                    f"{max(values) - min(values):.1f} points"
                )
    return list(dict.fromkeys(problems))


# ----------------------------------------------------------------- claims in words
_BEST_ACCURACY = re.compile(
    r"\b(best|highest|top|greatest|strongest)\b[^.;]{0,25}\b(accuracy|predict\w*)\b"
    r"|\bmost accurate\b",
    re.IGNORECASE,
)
_BEST_SCORE = re.compile(
    r"\b(best|highest|top)[- ](meta-learner )?(score|scored|ranked|ranking)\b|\branked first\b",
    re.IGNORECASE,
)
_FASTEST = re.compile(r"\b(fastest|quickest|shortest training)\b", re.IGNORECASE)
_FASTER = re.compile(r"\b(faster|quicker|cheaper)\b", re.IGNORECASE)
OPTIMIZER_WORDS = ("sgd", "adamw", "adamp", "rmsprop", "momentum")
_SAME_MODEL = re.compile(r"\bsame (model|architecture|network|backbone)\b", re.IGNORECASE)
_HELPS = re.compile(
    r"\b(help(s|ed|ing)?|boost\w*|improv\w*|raise[sd]?|rais\w*|adds?|added|gain\w*|benefit\w*|"
    r"thanks to|driven by|contribut\w*|increas\w* (the )?(predicted )?accuracy)\b",
    re.IGNORECASE,
)
_HURTS = re.compile(
    r"\b(hurt\w*|costs?|reduc\w*|penali[sz]\w*|drag\w*|lower(s|ed)? (the )?(predicted )?accuracy|"
    r"decreas\w* (the )?(predicted )?accuracy)\b",
    re.IGNORECASE,
)
_MORE = re.compile(r"\b(higher|larger|bigger|greater|more)\s+$", re.IGNORECASE)
_LESS = re.compile(r"\b(lower|smaller|less|reduced)\s+$", re.IGNORECASE)
CATEGORIES: dict[str, tuple[str, ...]] = {
    "augmentation": ("none", "light", "medium", "heavy", "strong", "no"),
    "optimizer": ("adamw", "adam", "adamp", "sgd", "momentum", "rmsprop"),
    "scheduler": ("cosine", "step", "multistep", "plateau", "constant"),
}
EFFECT_FEATURES = (
    "lr",
    "batch_size",
    "weight_decay",
    "epochs",
    "image_size",
    "label_smoothing",
    "dropout",
    "optimizer",
    "scheduler",
    "augmentation",
    "pretrained",
)


def claim_problems(
    text: str, candidate: Candidate, shortlist: Shortlist, cited_runs: list[SimilarRun]
) -> list[str]:
    """Claims made in words: "best predicted accuracy", "same model did well", "helped by
    its learning rate", "light augmentation", "a lower learning rate" must all be true of
    the chosen candidate and its SHAP facts."""
    problems: list[str] = []
    cands = shortlist.candidates
    facts = {f.feature: f for f in shortlist.facts_for(candidate.candidate_id)}
    hps = candidate.hyperparameters.model_dump()
    for sentence in sentences(text):
        if (
            _BEST_ACCURACY.search(sentence)
            and candidate.predicted_accuracy < max(c.predicted_accuracy for c in cands) - 5e-4
        ):
            top = max(cands, key=lambda c: c.predicted_accuracy)
            problems.append(
                f"claims the best predicted accuracy but {top.candidate_id} ({top.model}) is "
                "predicted higher"
            )
        if _BEST_SCORE.search(sentence) and candidate.score < max(c.score for c in cands):
            problems.append("claims the top meta-learner score but another candidate ranks higher")
        if _FASTEST.search(sentence) and candidate.predicted_seconds is not None:
            times = [c.predicted_seconds for c in cands if c.predicted_seconds is not None]
            if candidate.predicted_seconds > min(times) + 0.5:
                problems.append("claims the fastest training but another candidate is faster")
        if _FASTER.search(sentence) and candidate.predicted_seconds is not None:
            others = [
                c.predicted_seconds
                for c in cands
                if c is not candidate and c.predicted_seconds is not None
            ]
            if others and candidate.predicted_seconds >= statistics.median(others):
                problems.append(
                    f"says it trains faster, but its expected {candidate.predicted_seconds:.0f} s "
                    "is not below the other candidates' median"
                )
        optimizer = str(hps.get("optimizer") or "").lower()
        for word in OPTIMIZER_WORDS:
            if optimizer and word != optimizer and mentions(sentence, word):
                problems.append(f"mentions {word} but the candidate's optimizer is {optimizer}")
        if _SAME_MODEL.search(sentence):
            pool = cited_runs or shortlist.similar_runs
            if not any(r.model == candidate.model for r in pool):
                problems.append(
                    f"says the same model did well, but no cited past run used {candidate.model}"
                )
        for clause in clauses(sentence):
            problems += _effect_words(clause, facts, hps)
    return list(dict.fromkeys(problems))


def _effect_words(clause: str, facts: dict[str, ShapFact], hps: dict[str, object]) -> list[str]:
    """A feature named with 'helps'/'hurts' in the same clause must have a SHAP fact of that
    sign; named with a value, the value must be the candidate's."""
    problems: list[str] = []
    helps, hurts = bool(_HELPS.search(clause)), bool(_HURTS.search(clause))
    for feature in EFFECT_FEATURES:
        said = [a for a in _terms(feature) if mentions(clause, a)]
        if not said:
            continue
        fact = facts.get(feature)
        if helps != hurts:
            if fact is None:
                problems.append(
                    f"credits {said[0]} with an effect, but no SHAP fact of this candidate "
                    f"is about {feature}"
                )
            elif helps and fact.effect_points < 0:
                problems.append(
                    f"says {said[0]} helps, but its SHAP effect is {fact.effect_points:+.1f}"
                )
            elif hurts and fact.effect_points > 0:
                problems.append(
                    f"says {said[0]} hurts, but its SHAP effect is {fact.effect_points:+.1f}"
                )
        problems += _value_words(clause, feature, said, hps.get(feature), fact)
    return problems


def _value_words(
    sentence: str, feature: str, said: list[str], value: object, fact: ShapFact | None
) -> list[str]:
    """'light augmentation' when the candidate has none; 'a lower learning rate' when its
    value is above the KB median its fact compares with."""
    out: list[str] = []
    lowered = sentence.lower()
    if feature in CATEGORIES and isinstance(value, str):
        for word in CATEGORIES[feature]:
            near = re.search(
                rf"\b{word}\b\W+(?:\w+\W+)?{re.escape(said[0])}|{re.escape(said[0])}\W+"
                rf"(?:\w+\W+)?(?:of\W+|is\W+|=\W*)?{word}\b",
                lowered,
            )
            own = value.lower() == word or (word == "no" and value.lower() == "none")
            if near and not own:
                out.append(f"calls the {feature} {word!r} but the candidate's is {value!r}")
    if fact is not None and fact.reference is not None:
        try:
            mine, median = float(fact.value), float(fact.reference)
        except ValueError:
            return out
        for alias in said:
            for match in re.finditer(rf"\b{re.escape(alias)}\b", lowered):
                before = lowered[max(0, match.start() - 20) : match.start()]
                if _MORE.search(before) and mine < median:
                    out.append(f"calls the {alias} higher, but it is below the KB median")
                if _LESS.search(before) and mine > median:
                    out.append(f"calls the {alias} lower, but it is above the KB median")
    return out
