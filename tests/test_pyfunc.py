"""The champion's pyfunc flavour (models from code) without Ray: save, load with
``mlflow.pyfunc.load_model``, predict on a batch exactly like the torch model."""
from __future__ import annotations

import pytest
import torch

from merc.data.dataset import MercData
from merc.train import fit, resolve_config, save_model

FAST = {"hidden_size": 16, "gt_heads": 2, "pcm_layers": 1, "self_att_layers": 1,
        "text_encoder_layers": 1, "text_encoder_ff": 32, "batch_size": 8, "epochs": 1}


def test_pyfunc_loads_and_predicts_like_the_model(tiny_dir, tmp_path):
    import mlflow.pyfunc
    from merc.sweep.best import save_pyfunc
    train, mcfg = resolve_config("corect", FAST, "iemocap6")
    data = MercData(tiny_dir)
    res = fit("corect", data, train, mcfg)
    ck = tmp_path / "model.pt"
    save_model(ck, "corect", train, mcfg, data.meta, res.best_state)
    path = save_pyfunc(ck, tmp_path / "pyfunc")
    assert not list(path.rglob("*.pkl")), "models from code: nothing pickled"
    model = mlflow.pyfunc.load_model(str(path))
    batch = data["test"].batch([0, 1])
    inputs = {m: x.numpy() for m, x in batch.features.items()}
    inputs |= {"lengths": batch.lengths.numpy(), "speakers": batch.speakers.numpy()}
    out = model.predict(inputs)
    assert len(out) == int(batch.lengths.sum())
    assert set(out.label) <= set(data.meta.label_names)
    net = model.unwrap_python_model().model
    with torch.no_grad():
        want = net(batch).logits.argmax(-1)[batch.mask].numpy()
    assert (out.label_id.to_numpy() == want).all()
    probs = out[[f"p_{n}" for n in data.meta.label_names]].to_numpy()
    assert abs(probs.sum(1) - 1).max() < 1e-5
    with pytest.raises(ValueError, match="text"):
        model.predict({k: v for k, v in inputs.items() if k != "text"})
