"""Pausing a run and continuing it: the continuation equals an uninterrupted run.

Real training throughout (tiny models on generated arrays): what successive halving relies
on is that a promoted candidate's continued run is the run it would have been.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_train_pretrained import probe_splits
from test_train_trainer import splits, tiny

from metallmix.tools.training.checkpoint import Checkpoint
from metallmix.tools.training.trainer import TrainConfig, TrainResult, train


def _same(a: TrainResult, b: TrainResult) -> None:
    assert [h.train_loss for h in a.history] == [h.train_loss for h in b.history]
    assert a.learning_curve == b.learning_curve
    assert a.balanced_learning_curve == b.balanced_learning_curve
    assert a.best_epoch == b.best_epoch and a.epochs_run == b.epochs_run
    assert a.test_accuracy == b.test_accuracy and a.balanced_accuracy == b.balanced_accuracy


def test_paused_then_continued_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    # Augmentation, dropout and a cosine schedule: every random stream and the schedule
    # state must survive the pause for the curves to match exactly.
    config = tiny(
        epochs=4,
        augmentation="medium",
        dropout=0.2,
        scheduler="cosine",
        early_stopping_patience=None,
    )
    data = splits()
    whole = train(config, data)
    path = tmp_path / "c1.pt"
    seen: list[int] = []
    first = train(config, data, checkpoint=Checkpoint(path, stop_after=2))
    assert first.paused and first.epochs_run == 2 and path.is_file()
    assert "paused after epoch 2 of 4" in first.message
    assert first.test_accuracy is not None  # a paused run is still evaluated (best so far)
    assert first.learning_curve == whole.learning_curve[:2]  # trained under the full schedule
    # A first rung retried after its pause was saved (killed before it was recorded): it
    # trains nothing more and reports the same paused run.
    retried = train(config, data, checkpoint=Checkpoint(path, stop_after=2))
    assert retried.paused and retried.epochs_run == 2 and retried.resumed_epochs == 2
    assert retried.learning_curve == first.learning_curve
    rest = train(config, data, checkpoint=Checkpoint(path), progress=lambda s: seen.append(s.epoch))
    assert not rest.paused and rest.resumed_epochs == 2
    assert seen == [1, 2, 3, 4]  # the restored epochs are replayed to the caller's log
    _same(rest, whole)
    # Its cost is the whole run's: the paused part's epochs plus the continuation.
    assert rest.train_seconds >= sum(h.seconds for h in rest.history)


def test_a_checkpoint_for_other_data_or_settings_is_not_continued(tmp_path: Path) -> None:
    config = tiny(epochs=3, augmentation="none", early_stopping_patience=None)
    path = tmp_path / "c.pt"
    train(config, splits(), checkpoint=Checkpoint(path, stop_after=1))
    other = train(config.model_copy(update={"lr": 1e-2}), splits(), checkpoint=Checkpoint(path))
    assert other.resumed_epochs == 0 and other.epochs_run == 3
    moved = train(config, splits(seed=5), checkpoint=Checkpoint(path))
    assert moved.resumed_epochs == 0
    # The thread count does not change what is trained: that one continues.
    same = train(config.model_copy(update={"threads": 2}), splits(), checkpoint=Checkpoint(path))
    assert same.resumed_epochs == 1
    path.write_bytes(b"truncated")  # a damaged file: trained from scratch, not an error
    assert train(config, splits(), checkpoint=Checkpoint(path)).resumed_epochs == 0


def test_a_run_that_ended_before_its_pause_continues_as_finished(tmp_path: Path) -> None:
    # lr 1e6 diverges in the first epochs: the run ends before the pause, and a
    # continuation returns that ending instead of training again.
    config = tiny(model="resnet10t", optimizer="sgd", lr=1e6, epochs=4)
    path = tmp_path / "d.pt"
    first = train(config, splits(), checkpoint=Checkpoint(path, stop_after=3))
    assert first.status == "diverged" and not first.paused
    again = train(config, splits(), checkpoint=Checkpoint(path))
    assert again.status == "diverged" and again.epochs_run == first.epochs_run


def test_stop_after_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Checkpoint(tmp_path / "x.pt", stop_after=0)


def test_linear_probe_pauses_and_continues(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    data = probe_splits()
    config = TrainConfig(
        model="efficientnet_lite0",
        pretrained=True,
        finetune="linear_probe",
        image_size=32,
        epochs=3,
        dropout=0.3,
        threads=1,
        early_stopping_patience=None,
    )
    whole = train(config, data)
    path = tmp_path / "p.pt"
    assert train(config, data, checkpoint=Checkpoint(path, stop_after=1)).paused
    _same(train(config, data, checkpoint=Checkpoint(path)), whole)
