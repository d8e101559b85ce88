"""The hedging shortlist rules (tools/meta/portfolio.py): greedy best-of-K and families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metallmix.benchmarks.synthetic import synthetic_records
from metallmix.cli import main
from metallmix.errors import ConfigError
from metallmix.tools.kb.frame import records_to_frame
from metallmix.tools.kb.records import Hyperparameters
from metallmix.tools.kb.store import SQLiteKnowledgeBase
from metallmix.tools.meta.contracts import Candidate
from metallmix.tools.meta.metalearner import MetaLearner, MetaLearnerConfig
from metallmix.tools.meta.portfolio import (
    check_rule,
    families_of,
    family,
    family_portfolio,
    greedy_portfolio,
    kb_meta_of,
    kb_score_matrix,
)
from metallmix.tools.meta.search_space import CPU_ZOO_SPACE
from metallmix.tools.meta.shortlist import ShortlistOptions, regime_shortlist
from metallmix.verify import hedge_first

# Candidates 0 and 1 are near-copies, both good on KB datasets A and B; candidate 2 is the
# only good one on dataset C; candidate 3 is poor everywhere.
KB = np.array(
    [
        [1.0, 1.0, 0.0],
        [0.9, 0.9, 0.1],
        [0.2, 0.1, 1.0],
        [0.0, 0.0, 0.2],
    ]
)
USER = np.array([0.9, 0.8, 0.5, 0.1])  # the meta-learner's scores on the user's dataset


def test_greedy_portfolio_hedges_where_top_k_doubles_up() -> None:
    assert greedy_portfolio(USER, KB, 2) == [0, 2]  # top-2 would train 0 and its copy 1
    assert greedy_portfolio(USER, KB, 3) == [0, 2, 1]  # no gain left: the better score
    # later picks only from the pool best-predicted for the user's dataset
    assert greedy_portfolio(USER, KB, 2, pool=2) == [0, 1]
    # the dataset weights decide what a hedge is worth: C weighing nothing, no hedge
    assert greedy_portfolio(USER, KB, 2, weights=[0.5, 0.5, 0.0]) == [0, 1]
    assert greedy_portfolio(USER, KB, 2, first=3) == [3, 0]
    assert greedy_portfolio(USER, KB, 10) == [0, 2, 1, 3]  # never more than there are
    assert greedy_portfolio(USER, np.zeros((4, 0)), 2) == [0, 1]  # no KB: the ranking
    with pytest.raises(ConfigError, match="3 rows for 4 candidates"):
        greedy_portfolio(USER, KB[:3], 2)


def test_family_portfolio_covers_each_family_first() -> None:
    families = ["probe", "probe", "probe", "scratch", "fine-tune"]
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    assert family_portfolio(scores, families, 3) == [0, 3, 4]
    assert family_portfolio(scores, families, 5) == [0, 3, 4, 1, 2]
    assert family_portfolio(scores, ["probe"] * 5, 2) == [0, 1]


def test_family_names() -> None:
    assert family(False, None) == "scratch"
    assert family(True, "linear_probe") == "probe"
    assert family(True, "full") == family(True, None) == "fine-tune"
    frame = pd.DataFrame(
        {"pretrained": [True, True, False], "hp_x_finetune": ["linear_probe", "full", None]}
    )
    assert families_of(frame) == ["probe", "fine-tune", "scratch"]
    assert families_of(pd.DataFrame({"pretrained": [False]})) == ["scratch"]


def test_rule_names() -> None:
    assert check_rule("portfolio") == "portfolio"
    with pytest.raises(ConfigError, match="choose one of top, portfolio, family"):
        check_rule("best")


@pytest.mark.parametrize("objective", ["ensemble", "raw"])
def test_kb_scores_are_the_learners_predictions_on_each_kb_dataset(objective: str) -> None:
    records = synthetic_records(4, 10, seed=5)
    frame = records_to_frame(records)
    cfg = MetaLearnerConfig(
        objective=objective,  # type: ignore[arg-type]
        n_estimators=10,
        max_depth=3,
        with_uncertainty=False,
        with_cost=False,
        nthread=1,
    )
    learner = MetaLearner.fit(frame, cfg)
    meta, weights = kb_meta_of(frame)
    assert sorted(meta) == sorted({r.dataset for r in records})
    assert sum(weights.values()) == pytest.approx(1.0)
    candidates = frame[frame["dataset"] == "synth00"].reset_index(drop=True)
    matrix = kb_score_matrix(learner, candidates, meta)
    assert matrix.shape == (len(candidates), len(meta))
    for j, name in enumerate(sorted(meta)):
        moved = candidates.copy()
        for col, value in meta[name].items():
            moved[col] = value
        score = learner.predict(moved).score  # one call per dataset, as the product would
        expected = (score - score.min()) / (score.max() - score.min())
        np.testing.assert_allclose(matrix[:, j], expected, atol=1e-12)


def test_shortlist_under_each_rule(tmp_path: Path) -> None:
    """The hedging rules keep the meta-learner's best first, then hedge; a bad name fails."""
    kb = SQLiteKnowledgeBase(tmp_path / "kb.sqlite")
    kb.add(synthetic_records(5, 24, seed=7))
    mf = next(kb.iter_records()).meta_features
    fast = MetaLearnerConfig(n_estimators=30, max_depth=3, nthread=1)
    built = {
        rule: regime_shortlist(
            mf,
            kb,
            None,
            n=4,
            seed=2,
            options=ShortlistOptions(rule, n_samples=60, learner_config=fast),
        )
        for rule in ("top", "portfolio", "family")
    }
    best = max(built["top"].candidates, key=lambda c: c.score)
    for rule, shortlist in built.items():
        cands = shortlist.candidates
        assert [c.candidate_id for c in cands] == ["c1", "c2", "c3", "c4"], rule
        assert (cands[0].model, cands[0].hyperparameters) == (best.model, best.hyperparameters)
        assert all(CPU_ZOO_SPACE.contains(c.model, c.hyperparameters) for c in cands)
    # the family rule trains a pretrained backbone and a scratch CNN, whatever ranks first
    assert len({c.pretrained for c in built["family"].candidates}) == 2
    with pytest.raises(ConfigError, match="shortlist rule 'best'"):
        bad = ShortlistOptions("best", n_samples=60, learner_config=fast)  # type: ignore[arg-type]
        regime_shortlist(mf, kb, None, n=4, options=bad)


def _cand(cid: str, lr: float, score: float) -> Candidate:
    return Candidate(
        candidate_id=cid,
        model="resnet18",
        pretrained=False,
        hyperparameters=Hyperparameters(lr=lr),
        predicted_accuracy=0.5,
        accuracy_low=0.4,
        accuracy_high=0.6,
        score=score,
        origin="sampled",
    )


def test_hedge_first_keeps_the_rules_order_behind_the_zero_shot_pick() -> None:
    cands = [
        _cand("c1", 0.1, 0.9),
        _cand("c2", 0.2, 0.1),
        _cand("c3", 0.1, 0.8),
        _cand("c4", 0.3, 0.5),
    ]
    # c3 repeats c1's configuration; c2 scores low but the hedge chose it second
    assert [c.candidate_id for c in hedge_first(cands, "c4", 3)] == ["c4", "c1", "c2"]
    assert [c.candidate_id for c in hedge_first(cands, "c1", 10)] == ["c1", "c2", "c4"]


def test_cli_shortlist_rule_needs_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "card.json"
    data.write_text("{}")
    assert main(["recommend", str(data), "--shortlist", "portfolio"]) == 2
    assert "--shortlist" in capsys.readouterr().err
