"""The training loop: selection rule, determinism, divergence, checkpoints, resume."""
import math

import numpy as np
import pytest
import torch

from merc.data.dataset import MercData
from merc.metrics import classification_metrics, majority_wf1
from merc.train import TrainConfig, fit, load_model, resolve_config, save_model

FAST = {"hidden_size": 16, "gt_heads": 2, "pcm_layers": 1, "self_att_layers": 1,
        "text_encoder_layers": 1, "batch_size": 8}


def _run(data_dir, **over):
    train, model = resolve_config("corect", FAST | over, "iemocap6")
    data = MercData(data_dir, train.modalities, train.missing_rate, train.seed)
    return fit("corect", data, train, model), data, train, model


def test_selection_is_on_validation_and_test_reported_at_that_epoch(tiny_dir):
    reports = []
    res, *_ = _run(tiny_dir, epochs=4, lr=3e-3)
    assert res.status == "completed" and len(res.history) == 4
    best = max(range(4), key=lambda e: (res.history[e]["val_wf1"], -e))
    assert res.best_epoch == best + 1          # 1-based
    assert res.best["test_wf1"] == res.history[best]["test_wf1"]
    assert res.history[-1]["sel_epoch"] == best + 1


def test_same_seed_same_metrics_different_seed_differs(tiny_dir):
    a, *_ = _run(tiny_dir, epochs=2, seed=7)
    b, *_ = _run(tiny_dir, epochs=2, seed=7)
    c, *_ = _run(tiny_dir, epochs=2, seed=8)
    assert [h["val_wf1"] for h in a.history] == [h["val_wf1"] for h in b.history]
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


def test_nan_loss_ends_with_diverged_status(tiny_dir):
    res, *_ = _run(tiny_dir, epochs=3, lr=1e30)
    assert res.status == "diverged" and "non-finite" in res.reason


def test_report_and_checkpoint_resume_is_exact(tiny_dir, tmp_path):
    states, reported = {}, []
    train, model = resolve_config("corect", FAST | {"epochs": 3, "lr": 2e-3}, "iemocap6")
    data = MercData(tiny_dir, "ATV")
    full = fit("corect", data, train, model, report=lambda m, e: reported.append(e),
               checkpoint=lambda s, e: torch.save(s, tmp_path / f"ck{e}.pt"))
    assert reported == [0, 1, 2]
    state = torch.load(tmp_path / "ck0.pt", weights_only=True)   # no pickled objects
    resumed = fit("corect", data, train, model, resume=state)
    assert [h["val_wf1"] for h in resumed.history] == [h["val_wf1"] for h in full.history]


def test_saved_model_rebuilds_with_weights_only(tiny_dir, tmp_path):
    res, data, train, model = _run(tiny_dir, epochs=1)
    save_model(tmp_path / "m.pt", "corect", train, model, data.meta, res.best_state)
    rebuilt, cfg = load_model(tmp_path / "m.pt")
    batch = data["valid"].batch([0])
    assert cfg["model"]["hidden_size"] == 16
    assert torch.isfinite(rebuilt.eval()(batch).logits).all()


def test_metrics_follow_sklearn():
    y = np.array([0, 0, 1, 2, -100])
    p = np.array([0, 1, 1, 2, 0])
    m = classification_metrics(y, p, 3, ["a", "b", "c"])
    assert math.isclose(m["acc"], 75.0)
    from sklearn.metrics import f1_score
    assert math.isclose(m["wf1"], 100 * f1_score(y[:4], p[:4], average="weighted"))
    assert math.isclose(m["f1_c"], 100.0)
    assert majority_wf1(np.array([1, 1, 0]), np.array([1, 0])) == pytest.approx(
        100 * f1_score([1, 0], [1, 1], average="weighted"))


def test_corect_beats_majority_clearly(small_dir):
    res, data, *_ = _run(small_dir, epochs=8, lr=1e-3, hidden_size=32)
    maj = majority_wf1(data["train"].arrays.labels, data["test"].arrays.labels)
    assert res.best["test_wf1"] > maj + 15, (res.best, maj)
