"""What changed in the knowledge base since the last answer, said on the next answer.

The KB learns from every validation (``metallmix validate`` adds its run), so the same
question can get a different answer a minute later. That is the point of the loop, but it
must never be silent: after each recommendation the workspace keeps ``last_answer.json``
(the KB's run ids, its location and the answer), and the next recommendation states how
many runs are new, what they were, and how its answer differs from the last one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metallmix import config
from metallmix.atomic import write_text
from metallmix.tools.kb.records import RunRecord

LAST_ANSWER = "last_answer.json"
SHOWN_NEW_RUNS = 3  # new runs described one by one; the rest are counted


class Answer(BaseModel):
    """The part of a recommendation the next one compares itself with."""

    model_config = ConfigDict(extra="ignore")

    dataset: str = ""
    model: str = ""
    expected_score: float | None = None
    score_low: float | None = None
    score_high: float | None = None
    kb_hash: str = ""


class LastAnswer(BaseModel):
    """``last_answer.json``: the KB as the last answer saw it, and that answer."""

    model_config = ConfigDict(extra="ignore")

    kb: str = Field(description="where the KB was read from")
    run_ids: list[str] = Field(default_factory=list)
    answer: Answer = Field(default_factory=Answer)


def last_answer_path() -> Path:
    """``<workspace>/last_answer.json`` (``METALLMIX_HOME``)."""
    return config.home_dir() / LAST_ANSWER


def read_last(path: Path | None = None) -> LastAnswer | None:
    """The last answer's record, None when there is none or it is unreadable (a damaged file
    only costs the notice, never the answer)."""
    path = path or last_answer_path()
    try:
        return LastAnswer.model_validate_json(path.read_text())
    except (OSError, ValueError, ValidationError):
        return None


def describe_run(record: RunRecord) -> str:
    """'lcnet_050 on breastmnist-n150s0: balanced accuracy 73.3% (capped: 150 of 546
    training images, 5 epochs, 2 threads)'."""
    metric = record.score_metric.replace("_for_balanced", "").replace("_", " ")
    score = f"{metric} {record.score:.1%}" if record.score is not None else record.status
    return f"{record.model} on {record.dataset}: {score} ({record.fidelity.describe()})"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.1%}"


def change_notice(records: Iterable[RunRecord], kb: str, answer: Answer, last: LastAnswer) -> str:
    """One paragraph: the KB's new (and removed) runs since ``last``, and how the answer
    moved; '' when neither the KB nor its location changed."""
    runs = {r.run_id: r for r in records}
    before = set(last.run_ids)
    new = sorted((r for i, r in runs.items() if i not in before), key=lambda r: r.created_at)
    removed = len(before - set(runs))
    parts: list[str] = []
    if new:
        shown = "; ".join(describe_run(r) for r in new[-SHOWN_NEW_RUNS:])
        more = f" (and {len(new) - SHOWN_NEW_RUNS} more)" if len(new) > SHOWN_NEW_RUNS else ""
        parts.append(
            f"{len(new)} new run{'s' if len(new) != 1 else ''} since your last answer: "
            f"{shown}{more}."
        )
    if removed:
        parts.append(f"{removed} run{'s' if removed != 1 else ''} left the KB.")
    if kb != last.kb:
        parts.append(f"The KB is now read from {kb} (last answer: {last.kb}).")
    if not parts:
        return ""
    prev = last.answer
    if prev.dataset and prev.dataset == answer.dataset:
        if prev.model != answer.model:
            parts.append(
                f"Answer changed: {prev.model} {_pct(prev.expected_score)} -> "
                f"{answer.model} {_pct(answer.expected_score)}."
            )
        else:
            parts.append(
                f"Same model ({answer.model}); predicted {_pct(prev.expected_score)} "
                f"[{_pct(prev.score_low)}, {_pct(prev.score_high)}] -> "
                f"{_pct(answer.expected_score)} "
                f"[{_pct(answer.score_low)}, {_pct(answer.score_high)}]."
            )
    return " ".join(parts)


def note_answer(
    records: Iterable[RunRecord], kb: str, answer: Answer, *, path: Path | None = None
) -> str:
    """The notice for this answer (see :func:`change_notice`; '' on a first answer), and
    ``last_answer.json`` rewritten (atomically) for the next one."""
    records = list(records)
    path = path or last_answer_path()
    last = read_last(path)
    notice = change_notice(records, kb, answer, last) if last is not None else ""
    state = LastAnswer(kb=kb, run_ids=sorted(r.run_id for r in records), answer=answer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(state.model_dump(mode="json")))
    return notice


def answer_of(rec: Any) -> Answer:
    """The comparable part of a :class:`~metallmix.agents.schemas.Recommendation`."""
    return Answer(
        dataset=str(getattr(rec, "dataset", "")),
        model=str(getattr(rec, "model", "")),
        expected_score=getattr(rec, "expected_score", None),
        score_low=getattr(rec, "score_low", None),
        score_high=getattr(rec, "score_high", None),
    )
