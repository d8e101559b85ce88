"""``report.html``: one recommendation on one page, readable in MLflow's artifact viewer.

The MLflow UI shows artifacts one file at a time; a reviewer should not have to open six of
them to learn what was recommended and why. The page is self-contained (inline CSS, PNGs as
data URIs, no script) because the artifact viewer renders HTML in a sandboxed frame that
cannot fetch sibling artifacts. Everything on it is copied from the run's state: no number
is computed here except the chance and majority levels, from the meta-features, when the
recommendation does not carry them.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metallmix.tools.meta.search_space import hp_values

if TYPE_CHECKING:
    from metallmix.agents.schemas import Recommendation
    from metallmix.graphs.state import RecommendationState
    from metallmix.tools.metafeatures import MetaFeatures

CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
       margin: 16px 24px; color: #1f2933; max-width: 1100px; line-height: 1.45; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }
.answer { background: #eef6ee; border: 1px solid #9cc59c; border-radius: 6px; padding: 10px 14px; }
.warn { background: #fff5e0; border-color: #e0b050; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border: 1px solid #d5dbe1; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; } tr.chosen td { background: #eef6ee; font-weight: 600; }
.muted { color: #68737d; font-size: 12px; } img { max-width: 100%; border: 1px solid #e3e7eb; }
.levels td:nth-child(2) { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def metric_levels(
    rec: Recommendation, mf: MetaFeatures | None
) -> tuple[str, float | None, float | None]:
    """(metric name, chance level, majority-class accuracy): from the recommendation when it
    carries them, else derived from the training split's meta-features (1/k and the largest
    class's share)."""
    metric = str(getattr(rec, "metric", None) or "accuracy")
    chance = getattr(rec, "chance_level", None)
    majority = getattr(rec, "majority_accuracy", None)
    if mf is not None:
        if chance is None and mf.n_classes >= 1:
            chance = 1.0 / mf.n_classes
        if majority is None and mf.class_size_max is not None and mf.n_images > 0:
            majority = mf.class_size_max / mf.n_images
    return metric, chance, majority


def run_name(rec: Recommendation) -> str:
    """``breastmnist -> convnext_atto 85.9%``: the answer, readable in the runs table."""
    return f"{rec.dataset} -> {rec.model} {rec.expected_accuracy:.1%}"


def _img(path: Path | None, alt: str) -> str:
    if path is None or not path.is_file():
        return f'<p class="muted">({_e(alt)}: not available for this run)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def render(
    state: RecommendationState,
    *,
    run_id: str | None = None,
    waterfall: Path | None = None,
    global_bar: Path | None = None,
) -> str:
    """The HTML page of ``state``'s recommendation (empty string when there is none)."""
    rec = state.recommendation
    if rec is None:
        return ""
    mf = state.meta_features or rec.meta_features
    metric, chance, majority = metric_levels(rec, mf)
    parts: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_e(run_name(rec))}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(run_name(rec))}</h1>",
        f'<p class="muted">MetaLLMiX recommendation{" · run " + _e(run_id) if run_id else ""}'
        f" · LLM {_e(rec.llm or 'n/a')} · seed {rec.seed}</p>",
        f'<div class="answer{" warn" if rec.fallback else ""}"><b>{_e(rec.summary())}</b>',
    ]
    if rec.fallback:
        parts.append(
            "<br>Fallback: the LLM's answers were rejected by the judge; this is the "
            "meta-learner's top candidate with an explanation built from the evidence only."
        )
    parts.append("</div>")

    parts.append(f"<h2>Expected {_e(metric)} against simple baselines</h2>")
    parts.append('<table class="levels"><tr><th>level</th><th>value</th><th>meaning</th></tr>')
    parts.append(
        f"<tr><td>expected {_e(metric)}</td><td>{_pct(rec.expected_accuracy)}</td>"
        f"<td>meta-learner prediction, 10-90% interval {_pct(rec.accuracy_low)} - "
        f"{_pct(rec.accuracy_high)}</td></tr>"
    )
    parts.append(
        f"<tr><td>majority class</td><td>{_pct(majority)}</td>"
        "<td>always predicting the largest training class</td></tr>"
    )
    k = f"1/{mf.n_classes}" if mf is not None else "1/k"
    parts.append(
        f"<tr><td>chance</td><td>{_pct(chance)}</td><td>uniform random guess ({k})</td></tr>"
    )
    parts.append("</table>")

    parts.append("<h2>Configuration</h2><table>")
    parts.append(f"<tr><th>model</th><td>{_e(rec.model)}</td></tr>")
    parts.append(f"<tr><th>pretrained</th><td>{rec.pretrained}</td></tr>")
    for key, value in hp_values(rec.hyperparameters).items():
        if value is not None:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(f"<tr><th>{_e(key)}</th><td>{_e(shown)}</td></tr>")
    if rec.expected_train_seconds is not None:
        parts.append(
            f"<tr><th>expected training time</th><td>{rec.expected_train_seconds:.0f} s</td></tr>"
        )
    parts.append("</table>")

    parts.append(f"<h2>Why</h2><p>{_e(rec.explanation)}</p>")
    if rec.judge is not None:
        v = rec.judge
        scores = (
            f"; LLM grades format {v.scores.format}/5, accuracy {v.scores.accuracy}/5, "
            f"completeness {v.scores.completeness}/5"
            if v.scores is not None
            else ""
        )
        failed = f"; failed checks: {', '.join(v.failures)}" if v.failures else ""
        parts.append(
            f'<p class="muted">Judge: {"passed" if v.passed else "failed"} on attempt '
            f"{v.attempt} of {rec.attempts}{_e(scores)}{_e(failed)}</p>"
        )

    shortlist = state.shortlist
    if shortlist is not None:
        parts.append("<h2>Shortlist scored by the meta-learner</h2><table>")
        parts.append(
            "<tr><th>id</th><th>model</th><th>predicted</th><th>10-90%</th><th>seconds</th>"
            "<th>origin</th><th>hyperparameters</th></tr>"
        )
        for c in shortlist.candidates:
            hp = ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in hp_values(c.hyperparameters).items()
                if v is not None
            )
            chosen = ' class="chosen"' if c.candidate_id == rec.candidate_id else ""
            seconds = "" if c.predicted_seconds is None else f"{c.predicted_seconds:.0f}"
            parts.append(
                f"<tr{chosen}><td>{_e(c.candidate_id)}</td><td>{_e(c.model)}</td>"
                f"<td>{_pct(c.predicted_accuracy)}</td><td>{_pct(c.accuracy_low)} - "
                f"{_pct(c.accuracy_high)}</td><td>{seconds}</td><td>{_e(c.origin)}</td>"
                f"<td>{_e(hp)}</td></tr>"
            )
        parts.append("</table>")
        facts = [f for f in shortlist.facts if f.candidate_id == rec.candidate_id]
        parts.append(f"<h2>SHAP: why {_e(rec.candidate_id)} is predicted where it is</h2>")
        if facts:
            parts.append("<ul>" + "".join(f"<li>{_e(f.sentence)}</li>" for f in facts) + "</ul>")
        parts.append(_img(waterfall, "SHAP waterfall of the recommended candidate"))

    cited = set(rec.cited_runs)
    runs = state.similar_runs or (shortlist.similar_runs if shortlist is not None else [])
    if runs:
        parts.append("<h2>Similar past runs (cited ones first)</h2><table>")
        parts.append(
            "<tr><th>cited</th><th>run</th><th>dataset</th><th>similarity</th><th>model</th>"
            "<th>val acc</th><th>test acc</th><th>seconds</th></tr>"
        )
        for r in sorted(runs, key=lambda r: (r.run_id not in cited, -r.similarity)):
            seconds = "" if r.train_seconds is None else f"{r.train_seconds:.0f}"
            parts.append(
                f"<tr{' class=chosen' if r.run_id in cited else ''}>"
                f"<td>{'yes' if r.run_id in cited else ''}</td><td>{_e(r.run_id)}</td>"
                f"<td>{_e(r.dataset)}</td><td>{r.similarity:.3f}</td><td>{_e(r.model)}</td>"
                f"<td>{_pct(r.val_accuracy)}</td><td>{_pct(r.test_accuracy)}</td>"
                f"<td>{seconds}</td></tr>"
            )
        parts.append("</table>")
    missing = sorted(cited - {r.run_id for r in runs})
    if missing:
        parts.append(f'<p class="muted">cited but not retrieved: {_e(", ".join(missing))}</p>')

    if global_bar is not None:
        parts.append("<h2>What drives predicted accuracy across the KB</h2>")
        parts.append(_img(global_bar, "global SHAP importance"))
    if mf is not None:
        parts.append("<h2>Dataset meta-features</h2><table>")
        for key, value in mf.model_dump().items():
            if value is not None:
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                parts.append(f"<tr><th>{_e(key)}</th><td>{_e(shown)}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
