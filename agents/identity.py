"""What the explanation names as *the* pick must be the pick (issue 24).

The numbers checks (:mod:`metallmix.agents.attribution`) ask whether each number belongs to
what it sits next to; they cannot see a sentence that recommends one model and explains
another ("efficientnet_lite2 is the top-ranked candidate" when the answer is c1
``efficientnet_lite0``), a run described with the wrong model, or "accuracy" written next to
a balanced-accuracy number. These checks read identities instead of numbers:

- **Identity.** Every model name, candidate id, finetune mode, start (pretrained / from
  scratch) and hyperparameter value the text names must be the chosen candidate's, unless
  the mention is an explicit contrast ("ahead of c2", "instead of the KB median 64"), the
  description of a past run that has it, or a SHAP fact's reference value. A model name is
  anything in the shipped search spaces, the shortlist or its runs, or a token of a known
  architecture family with a digit (``resnet50``, ``ViT-B/16`` style names).
- **Comparisons.** "ahead of c2", "higher predicted accuracy than c3" must be true on the
  basis the sentence names (the meta-learner's rank, or the predicted score).
- **Metric words.** A metric word must name the metric of the number next to it: a
  candidate's prediction is in the shortlist's metric, a past run's number in the metric it
  is the value of (validation balanced accuracy, validation accuracy, test accuracy).
- **Past runs.** A sentence that reports a past run's number must name that run's model and
  dataset (when it names any), and a cited id must be that very run. An id that looks like a
  run id must exist, and no run (or its near-duplicate) is cited in two places.
- **Placeholders.** Template placeholders (``<model>``, ``MODEL_NAME``) never reach a user.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from metallmix.agents.evidence import (
    Number,
    citations,
    grounded,
    numbers_in,
    pct,
    run_key,
)
from metallmix.tools.meta.contracts import Candidate, Shortlist, SimilarRun
from metallmix.tools.meta.search_space import SPACES

# Architecture families (timm's naming); a family name followed by more name characters
# that include a digit is a model name ("resnet50", "vit_small_patch16_224", "ConvNeXt-T2").
FAMILIES = (
    "resnet|resnext|resnetv2|wide_resnet|seresnet|seresnext|skresnet|res2net|resnest|"
    "efficientnet|efficientnetv2|tf_efficientnet|tf_efficientnetv2|mobilenet|mobilenetv2|"
    "mobilenetv3|mobilevit|mobilevitv2|mobileone|convnext|convnextv2|vit|deit|deit3|beit|"
    "beitv2|swin|swinv2|densenet|regnet|regnetx|regnety|inception|vgg|alexnet|squeezenet|"
    "shufflenet|ghostnet|mnasnet|xception|levit|poolformer|edgenext|tinynet|lcnet|hrnet|dla|"
    "dpn|rexnet|tresnet|cspresnet|cspdarknet|darknet|maxvit|fastvit|efficientformer|caformer|"
    "convformer|coatnet|crossvit|cait|xcit|volo|twins|nfnet|dm_nfnet|repvgg|selecsls|fbnet|"
    "vovnet|ese_vovnet|botnet|halonet|gcvit|pvt_v2|visformer|efficientvit|repvit|hgnet|"
    "eva02|deit_tiny|mixnet|semnasnet|spnasnet|hardcorenas|lenet|unet"
)
_TOKEN = re.compile(r"(?<![\w/:.-])[A-Za-z][A-Za-z0-9]*(?:[-_./][A-Za-z0-9]+)*")
_FAMILY = re.compile(rf"^(?:{FAMILIES})", re.IGNORECASE)
_CANDIDATE = re.compile(r"(?<![\w/-])(?:c|candidate\s+#?|candidate\s+c)(\d+)(?![\w/-])", re.I)
_SHORT_RUN = re.compile(r"(?<![\w/:.-])r(\d+)(?![\w/:.-])")
_RUN_LIKE = re.compile(
    r"(?<![\w:-])(own-[0-9a-f]{6,}|quicktune:[\w:.-]+|mlflow-[0-9a-f]{6,}|run-[0-9a-f]{6,})",
    re.IGNORECASE,
)
_BARE_RUN_ID = re.compile(r"\brun\s+(?:id\s+)?#?([A-Za-z0-9][\w:.-]*\d[\w:.-]*)", re.IGNORECASE)
_PLACEHOLDER = re.compile(
    r"<[^<>\n]{1,40}>|\{[a-z_]{2,30}\}|\b(?:MODEL|CANDIDATE|DATASET|METRIC|RUN)_?(?:NAME|ID)\b"
    r"|\bXXX+\b|\.\.\.\s*\]"
)

# An explicit contrast or reference right before a mention: it is not named as the pick.
_CONTRAST = re.compile(
    r"\b(instead of|rather than|than|over|ahead of|above|below|behind|compared (?:with|to)|"
    r"versus|vs\.?|unlike|whereas|not|nor|no|other|alternatives?|another|median|usual|"
    r"typical|most common|same as|beats?|outranks?|outranked|outperforms?|except|besides|"
    r"differs? from|next best|runner-up|second|lower|higher|worse|better)\b",
    re.IGNORECASE,
)
CONTRAST_WORDS = 5  # at most this many words between the contrast word and the mention
_CLAUSE_BREAK = re.compile(r"[;:.!?]\s")
# Claims that the chosen candidate ranks above / below the contrasted one.
_ABOVE = re.compile(
    r"\b(ahead of|above|over|outranks?|beats?|outperforms?|"
    r"(?:better|higher|greater|more accurate|stronger)\b[^.;]{0,50}?\bthan)\b",
    re.IGNORECASE,
)
_BELOW = re.compile(
    r"\b(below|behind|outranked by|(?:worse|lower|less accurate|weaker)\b[^.;]{0,50}?\bthan)\b",
    re.IGNORECASE,
)
_RANK_WORDS = re.compile(r"\b(rank\w*|meta-learner|ranking|ordered|score[sd]?)\b", re.I)
_PRED_WORDS = re.compile(r"\b(predict\w*|accura\w*|expected|%)", re.I)

# Metric words, longest first so "balanced accuracy" is not read as "accuracy".
METRIC_PHRASES: tuple[tuple[str, str], ...] = (
    (r"balanced[- ]accuracy|balanced acc\b|bal\.? acc\w*", "balanced_accuracy"),
    (r"macro[- ]?f1|f1[- ]score|\bf1\b", "f1"),
    (r"au-?roc|\bauc\b", "auc"),
    (r"top-?1 accuracy|accuracy|\bacc\b", "accuracy"),
    (r"precision", "precision"),
    (r"recall|sensitivity", "recall"),
    (r"specificity", "specificity"),
    (r"error rate|\berror\b", "error"),
    (r"kappa|\bmcc\b", "kappa"),
)
_METRIC = re.compile(
    "|".join(f"(?P<m{i}>{pattern})" for i, (pattern, _) in enumerate(METRIC_PHRASES)),
    re.IGNORECASE,
)
_SPLIT = re.compile(r"\b(validation|val|test|train(?:ing)?)\W*$", re.IGNORECASE)
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "accuracy": "accuracy"}

# How each hyperparameter is written: ``alias value`` / ``alias = value`` / ``alias of value``.
HP_ALIASES: dict[str, tuple[str, ...]] = {
    "lr": ("learning rate", "learning-rate", "lr"),
    "batch_size": ("batch size", "batch_size", "batch-size"),
    "weight_decay": ("weight decay", "weight_decay"),
    "epochs": ("epochs", "epoch"),
    "image_size": ("image size", "image_size", "input size", "input resolution", "resolution"),
    "label_smoothing": ("label smoothing", "label_smoothing"),
    "dropout": ("dropout",),
    "optimizer": ("optimizer", "optimiser"),
    "scheduler": ("scheduler", "lr schedule", "schedule"),
    "augmentation": ("augmentation",),
}
_HP_VALUE = r"\s*(?:=|:|of|is|at|to|set to|was)?\s*(?:about\s+|~)?"
_NUMBER_TEXT = r"([-+]?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+))"
# "128 px input", "128x128 inputs", "29 epochs", "batches of 64"
_IMAGE_PX = re.compile(
    r"(?<![\w.])(\d+)\s*(?:x\s*\d+\s*)?(?:px|pixels?)\s+(?:inputs?|images?|crops?)\b|"
    r"\b(?:resiz\w*|upsampl\w*|downsampl\w*|scal\w*)\s+(?:\w+\s+){0,2}to\s+(\d+)\s*(?:x\s*\d+)?",
    re.IGNORECASE,
)
_EPOCHS = re.compile(r"(?<![\w.])(\d+)\s+(?:training\s+)?epochs?\b", re.IGNORECASE)
_BATCHES = re.compile(r"\bbatch(?:es)? of (\d+)\b", re.IGNORECASE)

FINETUNE_FORMS: dict[str, tuple[str, ...]] = {
    "linear_probe": (
        r"linear[-_ ]prob\w*",
        r"frozen (?:backbone|features|encoder)",
        r"freez\w* the (?:backbone|encoder|whole network)",
        r"fine-?tun\w*[ =:]+linear_probe",
    ),
    "last_stages": (
        r"last[-_ ]stages?",
        r"partial(?:ly)? fine-?tun\w*",
        r"fine-?tun\w* (?:only )?the last (?:stages?|layers?|blocks?)",
        r"fine-?tun\w*[ =:]+last_stages",
    ),
    "full": (
        r"full(?:y)?[- ]fine-?tun\w*",
        r"fine-?tun\w* (?:fully|the whole network|all layers|end[- ]to[- ]end)",
        r"fine-?tun\w*[ =:]+full\b",
        r"end[- ]to[- ]end fine-?tun\w*",
    ),
}
_PRETRAINED = re.compile(
    r"\b(?:imagenet[- ])?pre-?trained\b(?!\s*[=:]?\s*(?:true|false|yes|no|0|1)\b)"
    r"|\bimagenet weights\b|\btransfer learning\b",
    re.IGNORECASE,
)
_SCRATCH = re.compile(r"\bfrom scratch\b|\brandom(?:ly)? initiali[sz]\w*", re.IGNORECASE)
_NEGATED = re.compile(r"\b(not|no|never|without|instead of|rather than)\s+(?:\w+\s+){0,2}$", re.I)


def model_key(name: str) -> str:
    """One spelling for a model name: lower case, separators dropped ("ResNet-18" ==
    "resnet18", "EfficientNet_Lite0" == "efficientnetlite0")."""
    return re.sub(r"[-_./ ]", "", name.lower())


def known_models(shortlist: Shortlist) -> set[str]:
    """Model names the checks know by name: every shipped search space's, the shortlist's
    candidates, SHAP facts and past runs."""
    names: set[str] = set()
    for space in SPACES.values():
        names.update(space.models)
        names.update(getattr(space, "pretrained_models", []) or [])
    names.update(c.model for c in shortlist.candidates)
    names.update(r.model for r in shortlist.similar_runs)
    for f in shortlist.facts:
        if f.feature == "model":
            names.add(f.value)
            if f.reference:
                names.add(f.reference)
    return {n for n in names if n}


@dataclass(frozen=True)
class Mention:
    """A span of the text naming something (a model, a candidate id, a mode...)."""

    start: int
    end: int
    text: str
    key: str  # what it names, normalised


def model_mentions(text: str, known: Iterable[str]) -> list[Mention]:
    """Every model name in ``text``: a known name in any spelling, or a family token with a
    digit."""
    keys = {model_key(k): k for k in known}
    out: list[Mention] = []
    for m in _TOKEN.finditer(text):
        token = m.group(0).rstrip(".-_/")
        key = model_key(token)
        if key in keys or _is_family_name(token):
            out.append(Mention(m.start(), m.start() + len(token), token, key))
    return out


def _is_family_name(token: str) -> bool:
    """A family name with a variant after it ("resnet50", "convnext_tiny", "ViT-B"); a bare
    family ("ResNet", "ViTs") names no model."""
    m = _FAMILY.match(token)
    if m is None or "mnist" in token.lower():
        return False
    rest = token[m.end() :]
    return bool(rest) and (rest[0].isdigit() or (rest[0] in "-_" and len(rest) > 1))


_ABBREVIATION = re.compile(r"(?:\b(?:vs|e\.g|i\.e|approx|cf|etc|no)\.)$", re.IGNORECASE)


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for m in re.finditer(r"(?<=[.!?])\s+", text):
        if _ABBREVIATION.search(text[start : m.start()]):
            continue
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _sentence_of(spans: list[tuple[int, int]], pos: int) -> tuple[int, int]:
    for a, b in spans:
        if a <= pos < b or (pos == b and a < b):
            return a, b
    return spans[-1] if spans else (0, 0)


def contrasted(text: str, start: int, sentence_start: int) -> bool:
    """An explicit contrast / reference word at most CONTRAST_WORDS words before ``start``
    in the same clause."""
    before = text[sentence_start:start]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    if breaks:
        before = before[breaks[-1].end() :]
    matches = list(_CONTRAST.finditer(before))
    if not matches:
        return False
    between = before[matches[-1].end() :]
    # words between the contrast word and the mention; ids and "the"/"KB" count as words
    return len(re.findall(r"[\w%.+-]+", between)) <= CONTRAST_WORDS


# ----------------------------------------------------------------- identity of the pick
def identity_problems(
    text: str,
    chosen: Candidate,
    shortlist: Shortlist,
    *,
    dataset: str = "",
) -> list[str]:
    """Names, ids, modes and values the text attributes to the pick that are not the pick's."""
    problems: list[str] = []
    spans = _sentence_spans(text)
    runs = shortlist.similar_runs
    run_models = {model_key(r.model) for r in runs}
    chosen_key = model_key(chosen.model)
    for m in model_mentions(text, known_models(shortlist)):
        if m.key == chosen_key:
            continue
        a, b = _sentence_of(spans, m.start)
        sentence = text[a:b]
        if contrasted(text, m.start, a):
            continue
        if m.key in run_models and _about_run(sentence):
            continue  # a past run's model, checked against the run by run_problems
        other = next((c for c in shortlist.candidates if model_key(c.model) == m.key), None)
        who = f" ({other.candidate_id})" if other else ""
        problems.append(
            f"names {m.text}{who} as if it were the recommendation, but the chosen candidate "
            f"is {chosen.candidate_id} ({chosen.model}); name another model only as a contrast "
            "('ahead of ...') or as a past run's model"
        )
    ids = {c.candidate_id.lower() for c in shortlist.candidates}
    for hit in _CANDIDATE.finditer(text):
        cid = f"c{hit.group(1)}"
        if cid == chosen.candidate_id.lower():
            continue
        a, _ = _sentence_of(spans, hit.start())
        if cid not in ids:
            problems.append(f"names candidate {cid}, which is not in the shortlist")
        elif not contrasted(text, hit.start(), a):
            problems.append(
                f"names {cid} as if it were the recommendation, but the chosen candidate is "
                f"{chosen.candidate_id}"
            )
    problems += _mode_problems(text, chosen, spans)
    problems += _value_problems(text, chosen, spans)
    problems += comparison_problems(text, chosen, shortlist, spans)
    return list(dict.fromkeys(problems))


_RUN_TALK = re.compile(
    r"\b(?:past|previous|earlier|prior|retrieved|historical|similar|kb|other|one|a|two|three)"
    r"\s+(?:\w+\s+)?runs?\b|\bruns?\s+(?:of|id|\[|#)|\b(?:reached|achieved|scored|"
    r"was trained|were trained|in the (?:kb|knowledge base))\b",
    re.IGNORECASE,
)


def _about_run(sentence: str) -> bool:
    """The sentence reports a past run (a citation, a short run id or run words; 'it runs
    on 64 px inputs' is not one)."""
    return bool(citations(sentence) or _SHORT_RUN.search(sentence) or _RUN_TALK.search(sentence))


def _mode_problems(text: str, chosen: Candidate, spans: list[tuple[int, int]]) -> list[str]:
    """Finetune mode and start (pretrained / from scratch) must be the chosen candidate's."""
    problems: list[str] = []
    mode = str(chosen.hyperparameters.extra.get("finetune") or "").lower()
    for name, forms in FINETUNE_FORMS.items():
        if name == mode:
            continue
        for form in forms:
            for m in re.finditer(form, text, re.IGNORECASE):
                a, _ = _sentence_of(spans, m.start())
                if contrasted(text, m.start(), a) or _NEGATED.search(text[a : m.start()]):
                    continue
                own = f"finetune {mode}" if mode else "no finetune mode (trained from scratch)"
                problems.append(
                    f"says {m.group(0)!r} but the chosen candidate {chosen.candidate_id} uses {own}"
                )
    wrong = _SCRATCH if chosen.pretrained else _PRETRAINED
    for m in wrong.finditer(text):
        a, _ = _sentence_of(spans, m.start())
        if contrasted(text, m.start(), a) or _NEGATED.search(text[a : m.start()]):
            continue
        if _about_run(text[a : _sentence_of(spans, m.start())[1]]) and not _names_pick(
            text[a : m.start()], chosen
        ):
            continue  # a past run's start, not the pick's
        start = "pretrained" if chosen.pretrained else "trained from scratch"
        problems.append(
            f"says {m.group(0)!r} but the chosen candidate {chosen.candidate_id} "
            f"({chosen.model}) is {start}"
        )
    return problems


def _names_pick(text: str, chosen: Candidate) -> bool:
    return model_key(chosen.model) in {model_key(t) for t in _TOKEN.findall(text)}


def _value_problems(text: str, chosen: Candidate, spans: list[tuple[int, int]]) -> list[str]:
    """``image size 64``, ``lr=0.01``, ``29 epochs``, ``optimizer sgd`` must be the pick's
    values (a SHAP fact's KB median after 'instead of' is a contrast)."""
    problems: list[str] = []
    hps = chosen.hyperparameters.model_dump()
    hps.update({k: v for k, v in chosen.hyperparameters.extra.items()})

    def judge_value(name: str, written: str, pos: int) -> None:
        a, b = _sentence_of(spans, pos)
        if contrasted(text, pos, a):
            return
        sentence = text[a:b]
        if _about_run(sentence) and not _names_pick(sentence, chosen):
            return  # a past run's setting
        own = hps.get(name)
        if own is None:
            problems.append(
                f"gives {name} {written} but the chosen candidate {chosen.candidate_id} sets no "
                f"{name}"
            )
            return
        if isinstance(own, int | float) and not isinstance(own, bool):
            numbers = numbers_in(written)
            if numbers and not grounded(numbers[0], [float(own)], transform=False):
                problems.append(
                    f"gives {name} {written} but the chosen candidate {chosen.candidate_id} "
                    f"has {name}={own:g}"
                )
        elif str(own).lower() != written.lower() and not (
            written.lower() in ("no", "none") and str(own).lower() == "none"
        ):
            problems.append(
                f"gives {name} {written!r} but the chosen candidate {chosen.candidate_id} has "
                f"{name}={own}"
            )

    for name, aliases in HP_ALIASES.items():
        for alias in aliases:
            pattern = rf"(?<![\w-]){re.escape(alias)}(?![\w-]){_HP_VALUE}"
            own = hps.get(name)
            if isinstance(own, str) or name in ("optimizer", "scheduler", "augmentation"):
                value = r"([a-z][a-z0-9_]*)\b"
            else:
                value = _NUMBER_TEXT + r"(?![\w%x]|\.\d)"
            for m in re.finditer(pattern + value, text, re.IGNORECASE):
                word = m.group(1)
                if value.startswith("([a-z]") and word.lower() in _STOP:
                    continue
                if name == "image_size" and alias == "resolution":
                    continue  # "median resolution 28x28 px" is the dataset's, not the input's
                judge_value(name, word, m.start(1))
    for regex, name in ((_IMAGE_PX, "image_size"), (_EPOCHS, "epochs"), (_BATCHES, "batch_size")):
        for m in regex.finditer(text):
            group = next(g for g in m.groups() if g)
            pos = m.start()
            a, _ = _sentence_of(spans, pos)
            if re.search(r"\b(median|dataset|images? (?:are|of))\b", text[a:pos], re.I):
                continue  # the dataset's resolution
            judge_value(name, group, pos)
    return problems


_STOP = frozenset(
    {
        "the", "a", "an", "of", "is", "and", "to", "for", "that", "this", "its", "it", "with",
        "instead", "kb", "same", "most", "usual", "than", "in", "on", "by", "as", "helps",
        "hurts", "which", "was", "are", "be", "from", "value", "choice", "setting", "median",
        "adds", "costs", "effect", "matters", "here", "there", "predicted", "pts", "points",
    }
)  # fmt: skip


def comparison_problems(
    text: str, chosen: Candidate, shortlist: Shortlist, spans: list[tuple[int, int]] | None = None
) -> list[str]:
    """'ahead of c2', 'higher predicted accuracy than efficientnet_lite2' must be true of the
    chosen candidate on the basis the sentence names (rank words: the meta-learner's rank;
    else prediction words: the predicted score)."""
    spans = spans or _sentence_spans(text)
    problems: list[str] = []
    by_key = {model_key(c.model): c for c in shortlist.candidates}
    by_id = {c.candidate_id.lower(): c for c in shortlist.candidates}
    for a, b in spans:
        sentence = text[a:b]
        for rel, above in ((_ABOVE, True), (_BELOW, False)):
            for m in rel.finditer(sentence):
                rest = sentence[m.end() : m.end() + 60]
                other = _first_candidate(rest, by_key, by_id)
                if other is None or other is chosen:
                    continue
                head = sentence[: m.start()]
                if _RANK_WORDS.search(sentence):
                    mine, theirs, basis = chosen.score, other.score, "the meta-learner's rank"
                elif _PRED_WORDS.search(sentence):
                    mine, theirs = chosen.predicted_accuracy, other.predicted_accuracy
                    basis = "the predicted score"
                else:
                    continue
                if re.search(r"\b(not|never)\b", head[-30:], re.IGNORECASE):
                    above = not above
                if (above and mine < theirs) or (not above and mine > theirs):
                    where = "ahead of" if above else "behind"
                    problems.append(
                        f"puts {chosen.candidate_id} {where} {other.candidate_id} "
                        f"({other.model}), but on {basis} it is the other way round"
                    )
    return problems


def _first_candidate(
    text: str, by_key: dict[str, Candidate], by_id: dict[str, Candidate]
) -> Candidate | None:
    best: tuple[int, Candidate] | None = None
    for m in _CANDIDATE.finditer(text):
        c = by_id.get(f"c{m.group(1)}")
        if c is not None and (best is None or m.start() < best[0]):
            best = (m.start(), c)
    for m in _TOKEN.finditer(text):
        c = by_key.get(model_key(m.group(0).rstrip(".-_/")))
        if c is not None and (best is None or m.start() < best[0]):
            best = (m.start(), c)
    return best[1] if best else None


# ----------------------------------------------------------------- metric words
@dataclass(frozen=True)
class Scored:
    """A score the evidence holds, in a metric, on a split, and whose it is."""

    value: float
    metric: str
    split: str  # "validation" or "test"
    owner: frozenset[str]  # model keys, candidate ids, run ids, dataset names (lower case)


def scored_values(shortlist: Shortlist) -> list[Scored]:
    out: list[Scored] = []
    for c in shortlist.candidates:
        who = frozenset({model_key(c.model), c.candidate_id.lower()})
        for v in (c.predicted_accuracy, c.accuracy_low, c.accuracy_high):
            out.append(Scored(v, shortlist.metric, "validation", who))
    for r in shortlist.similar_runs:
        who = frozenset({model_key(r.model), r.run_id.lower(), r.dataset.lower()})
        for value, metric, split in (
            (r.val_accuracy, "accuracy", "validation"),
            (r.val_balanced_accuracy, "balanced_accuracy", "validation"),
            (r.test_accuracy, "accuracy", "test"),
        ):
            if value is not None:
                out.append(Scored(value, metric, split, who))
    return out


def metric_problems(text: str, shortlist: Shortlist) -> list[str]:
    """Each metric word must be the metric of the score next to it (nearest number in the
    same clause)."""
    scores = scored_values(shortlist)
    problems: list[str] = []
    for a, b in _sentence_spans(text):
        sentence = text[a:b]
        clauses = re.split(r";\s*|\)\s*,|\s+(?:while|whereas|but)\s+", sentence)
        for clause in clauses:
            words = list(_METRIC.finditer(clause))
            if not words:
                continue
            for number in _percent_numbers(clause):
                matching = [s for s in scores if _score_matches(number[0], s.value)]
                if not matching:
                    continue
                word = min(words, key=lambda w: abs(w.start() - number[1]))
                said = next(METRIC_PHRASES[int(k[1:])][1] for k, v in word.groupdict().items() if v)
                split_m = _SPLIT.search(clause[: word.start()])
                split = split_m.group(1).lower() if split_m else None
                split = {"val": "validation", "train": None, "training": None}.get(
                    split or "", split
                )
                named = {model_key(t) for t in _TOKEN.findall(clause)} | {
                    t.lower() for t in _TOKEN.findall(clause)
                }
                owned = [s for s in matching if s.owner & named] or matching
                fits = [
                    s for s in owned if s.metric == said and (split is None or s.split == split)
                ]
                if not fits:
                    right = sorted(
                        {f"{s.split} {METRIC_NAMES.get(s.metric, s.metric)}" for s in owned}
                    )
                    problems.append(
                        f"writes {word.group(0)!r} next to {number[2]}, which is "
                        f"{' or '.join(right)}: name the metric the number is in"
                    )
    return list(dict.fromkeys(problems))


def _percent_numbers(clause: str) -> list[tuple[Number, int, str]]:
    out = []
    for m in re.finditer(r"(?<![\w.])(\d+(?:\.\d+)?)\s*%", clause):
        n = numbers_in(m.group(1))
        if n:
            out.append((n[0], m.start(), m.group(0)))
    return out


def _score_matches(number: Number, value: float) -> bool:
    return grounded(number, [value * 100], transform=False)


# ----------------------------------------------------------------- past runs
def run_problems(
    text: str,
    shortlist: Shortlist,
    *,
    known_run_ids: set[str] | None = None,
) -> list[str]:
    """Run descriptions and run ids: each cited run described by its own model, dataset and
    number; no invented id; no run (or near-duplicate) cited in two places."""
    problems: list[str] = []
    runs = {r.run_id: r for r in shortlist.similar_runs}
    valid = set(runs) | (known_run_ids or set())
    known = known_models(shortlist)
    datasets = sorted({r.dataset for r in shortlist.similar_runs}, key=len, reverse=True)
    spans = _sentence_spans(text)
    seen_keys: dict[tuple[object, ...], int] = {}
    seen_ids: dict[str, int] = {}
    for index, (a, b) in enumerate(spans):
        sentence = text[a:b]
        cited = citations(sentence)
        for rid in cited:
            if rid in seen_ids and seen_ids[rid] != index:
                problems.append(f"cites run {rid} twice")
            seen_ids.setdefault(rid, index)
            run = runs.get(rid)
            if run is None:
                continue
            key = run_key(run)
            if key in seen_keys and seen_keys[key] != index:
                problems.append(
                    f"cites run {rid} as separate evidence, but it repeats an earlier citation "
                    f"(same model, dataset, configuration and score): cite it once as 'N runs'"
                )
            seen_keys.setdefault(key, index)
        if not (cited or _about_run(sentence)):
            continue
        numbers = _percent_numbers(sentence)
        mentions = model_mentions(sentence, known)
        models = {m.key for m in mentions}
        named_sets = [d for d in datasets if _mentions(sentence, d)]
        named_sets = [d for d in named_sets if not any(d != o and d in o for o in named_sets)]
        for m in mentions:  # "<model> on <dataset>": the dataset a run is described on
            after = re.match(r"\s+on\s+([\w][\w/+.:-]*\w|\w)", sentence[m.end :])
            if after and after.group(1).lower() not in _NOT_DATASETS:
                token = after.group(1)
                if token not in named_sets:
                    named_sets.append(token)
        pool = [runs[r] for r in cited if r in runs] if cited else list(runs.values())
        if not pool or (not cited and not numbers):
            continue
        run_numbers = [
            n
            for n in numbers
            if any(_score_matches(n[0], v) for r in runs.values() for v in _run_scores(r))
        ]
        if not cited and not run_numbers:
            continue
        fits = [
            r
            for r in pool
            if (not models or model_key(r.model) in models)
            and (not named_sets or r.dataset in named_sets)
            and all(any(_score_matches(n[0], v) for v in _run_scores(r)) for n in run_numbers)
        ]
        if not fits:
            what = "cited run " + ", ".join(cited) if cited else "the past run it describes"
            truth = "; ".join(f"{r.run_id}: {r.model} on {r.dataset}" for r in pool[:2] if cited)
            problems.append(
                f"describes {what} with a model, dataset or score that is not that run's"
                + (f" ({truth})" if truth else "")
            )
    for hit in _RUN_LIKE.finditer(text):
        if hit.group(1) not in valid:
            problems.append(f"names run {hit.group(1)}, which is not in the evidence")
    for hit in _BARE_RUN_ID.finditer(text):
        token = hit.group(1).rstrip(".,;:)")
        if token in valid or re.fullmatch(r"[\d.,]+%?", token) or _SHORT_RUN.fullmatch(token):
            continue
        if token.lower() in {d.lower() for d in datasets}:
            continue
        problems.append(f"names run {token}, which is not in the evidence")
    n_runs = len(shortlist.similar_runs)
    for hit in _SHORT_RUN.finditer(text):
        if int(hit.group(1)) > n_runs or int(hit.group(1)) == 0:
            problems.append(f"cites r{hit.group(1)}, which is not one of the listed past runs")
    return list(dict.fromkeys(problems))


_NOT_DATASETS = frozenset(
    {
        "this", "these", "that", "the", "a", "an", "its", "your", "such", "similar", "small",
        "large", "few", "many", "datasets", "dataset", "images", "data", "average", "top",
        "it", "them", "each", "both", "cpu", "gpu", "validation", "test",
    }
)  # fmt: skip


def _run_scores(r: SimilarRun) -> list[float]:
    return [v for v in (r.val_accuracy, r.val_balanced_accuracy, r.test_accuracy) if v is not None]


def _mentions(text: str, term: str) -> bool:
    return re.search(rf"(?<![\w/-]){re.escape(term)}(?![\w/-])", text, re.IGNORECASE) is not None


_TOP = re.compile(r"\b(top|best|highest|first|leading|strongest|winning)\b", re.IGNORECASE)
_BASIS = re.compile(r"\b(meta-learner|expected rank|rank(?:ing)? score|percentile)\b", re.I)


def top_by_number_problems(text: str, chosen: Candidate, shortlist: Shortlist) -> list[str]:
    """'top ... 81.9%' when another candidate is predicted higher: the number does not make
    it top; only the rank basis does, and then the sentence must say so."""
    higher = [c for c in shortlist.candidates if c.predicted_accuracy > chosen.predicted_accuracy]
    if not higher:
        return []
    best = max(higher, key=lambda c: c.predicted_accuracy)
    problems = []
    for a, b in _sentence_spans(text):
        sentence = text[a:b]
        if not _TOP.search(sentence) or _BASIS.search(sentence):
            continue
        if any(_score_matches(n[0], chosen.predicted_accuracy) for n in _percent_numbers(sentence)):
            problems.append(
                f"calls {chosen.candidate_id} top next to its predicted "
                f"{pct(chosen.predicted_accuracy)}, "
                f"but {best.candidate_id} ({best.model}) is predicted higher "
                f"({pct(best.predicted_accuracy)}); it is first by the meta-learner's rank, say so"
            )
    return problems


def placeholder_problems(text: str) -> list[str]:
    found = _PLACEHOLDER.findall(text)
    return [f"contains the template placeholder {p!r}" for p in dict.fromkeys(found)]


# ----------------------------------------------------------------- the LLM's own words read
_CODE_LIKE = re.compile(r"\w\.\w+\(|\b\w+\(\s*\)|[{}<>=`\\]|\(\s*$")
_GAP = re.compile(r"\s{2,}|\s[,.;:]|[,;:]\s*[.!?]?$")
_DANGLING = re.compile(
    r"\b(of|the|a|an|to|with|and|or|is|are|by|for|in|on|at|its|than|as|from|that|which)"
    r"\s*[.!?]?\s*$",
    re.IGNORECASE,
)


def readable_problems(rationale: str) -> list[str]:
    """The LLM's words must read as finished English sentences.

    A small model denied a token it wanted, or cut off by the length bound, can leave text
    that every fact check passes because it claims nothing: "has a median resolution of
    .basicConfig(" or "The image size of." The user would read it as the product's voice,
    so it is rejected like a wrong claim (the regeneration or the fallback replaces it)."""
    words = rationale.strip()
    if not words:
        return []
    problems: list[str] = []
    code = _CODE_LIKE.search(words)
    if code:
        problems.append(f"the rationale contains code-like text: {code[0]!r}")
    if _GAP.search(words):
        problems.append("the rationale has a gap or a stray punctuation mark")
    if words.count("(") != words.count(")"):
        problems.append("the rationale has an unclosed parenthesis")
    if _DANGLING.search(words):
        problems.append("the rationale stops mid-sentence: finish each sentence")
    if len(re.findall(r"[A-Za-z]{2,}", words)) < 4:
        problems.append("the rationale is too short to say anything: write a full sentence")
    return problems
