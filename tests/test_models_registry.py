"""Contract every registered model must meet (run for each name in the registry)."""
import pytest
import torch

from merc.data.dataset import MercData
from merc.models import build_model, model_names
from merc.train import resolve_config


@pytest.fixture(scope="module")
def data(tiny_dir):
    return MercData(tiny_dir, "ATV")


@pytest.mark.parametrize("name", model_names())
def test_shapes_no_nan_and_gradients(name, data):
    torch.manual_seed(0)
    _, cfg = resolve_config(name, {}, "iemocap6")
    model = build_model(name, cfg, data.meta)
    batch = data["train"].batch([0, 1, 2])
    out = model(batch)
    B, N = batch.labels.shape
    assert out.logits.shape == (B, N, data.meta.num_classes)
    assert torch.isfinite(out.logits[batch.mask]).all()
    loss = torch.nn.functional.cross_entropy(out.logits[batch.mask], batch.labels[batch.mask])
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    if out.modality_logits:
        for lg in out.modality_logits.values():
            assert lg.shape == out.logits.shape
            loss = loss + torch.nn.functional.cross_entropy(lg[batch.mask], batch.labels[batch.mask])
    loss.backward()
    unused = model.unused_parameters()   # created by the released code, never used there
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in unused
               and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not missing, f"parameters without a (finite) gradient: {missing[:10]}"


@pytest.mark.parametrize("name", model_names())
def test_length_one_dialogue(name, data, tmp_path):
    from merc.data.format import Dialogue, Manifest, write_dataset
    import numpy as np
    m = data.manifest
    d = Dialogue("one", {k: np.ones((1, v), np.float32) for k, v in m.modalities.items()},
                 np.array([1]), np.array([2]))
    write_dataset(tmp_path, Manifest(name="one", family="iemocap6", num_classes=6,
                                     label_names=m.label_names, modalities=m.modalities,
                                     num_speakers=2, splits={}),
                  {"train": [d], "valid": [d], "test": [d]})
    one = MercData(tmp_path, "ATV")
    _, cfg = resolve_config(name, {}, "iemocap6")
    model = build_model(name, cfg, one.meta).eval()
    out = model(one["train"].batch([0]))
    assert out.logits.shape == (1, 1, 6) and torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("mods", ["T", "AV"])
def test_modality_subsets(name, mods, tiny_dir):
    data = MercData(tiny_dir, mods)
    _, cfg = resolve_config(name, {}, "iemocap6")
    model = build_model(name, cfg, data.meta).eval()
    out = model(data["valid"].batch([0, 1]))
    assert torch.isfinite(out.logits).all()
