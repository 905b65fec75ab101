"""Canonical format, synthetic generator, batching and transforms."""
import json

import numpy as np
import pytest
import torch

from merc.data.dataset import MercData
from merc.data.format import DatasetError, read_manifest, read_split
from merc.data.synthetic import PRESETS, generate, resolve_data, synth
from merc.data.transforms import fixed_missing_mask, parse_modalities


def test_iemocap_shape_matches_the_papers_counts():
    cfg = PRESETS["iemocap6"]
    sp = generate(cfg, seed=3)
    assert {s: len(d) for s, d in sp.items()} == {"train": 108, "valid": 12, "test": 31}
    assert {s: sum(len(x) for x in d) for s, d in sp.items()} == {"train": 5146, "valid": 664,
                                                                  "test": 1623}
    lens = np.array([len(x) for d in sp.values() for x in d])
    assert 40 <= lens.mean() <= 55 and lens.min() >= 8 and lens.max() <= 110
    d0 = sp["train"][0]
    assert {m: f.shape[1] for m, f in d0.features.items()} == {"audio": 100, "text": 768,
                                                              "visual": 512}


def test_synthetic_is_deterministic_by_seed(tmp_path):
    m1 = synth(tmp_path / "a", "tiny", seed=5)
    m2 = synth(tmp_path / "b", "tiny", seed=5)
    m3 = synth(tmp_path / "c", "tiny", seed=6)
    assert m1.fingerprint == m2.fingerprint != m3.fingerprint
    a, b = read_split(tmp_path / "a", "train"), read_split(tmp_path / "b", "train")
    np.testing.assert_array_equal(a.features["text"], b.features["text"])


def test_synthetic_has_modality_imbalance_and_past_context():
    """Text carries more label signal than visual, and past context more than future."""
    from sklearn.linear_model import LogisticRegression
    cfg = PRESETS["iemocap6"].model_copy(update={"dims": {"audio": 16, "text": 16, "visual": 16}})
    sp = generate(cfg, seed=0)

    def xy(split, m, shift=0):
        X, y = [], []
        for d in sp[split]:
            F = d.features[m]
            Z = np.zeros_like(F)
            if shift > 0:
                Z[shift:] = F[:-shift] if len(F) > shift else 0
            elif shift < 0:
                Z[:shift] = F[-shift:] if len(F) > -shift else 0
            X.append(np.concatenate([F, Z], 1) if shift else F)
            y.append(d.labels)
        return np.concatenate(X), np.concatenate(y)

    def score(m, shift=0):
        X, y = xy("train", m, shift)
        Xt, yt = xy("test", m, shift)
        return LogisticRegression(max_iter=500).fit(X, y).score(Xt, yt)

    assert score("text") > score("visual") + 0.1
    assert score("text", 1) > score("text", -1)


def test_manifest_and_arrays_round_trip(tiny_dir):
    m = read_manifest(tiny_dir)
    assert m.num_classes == 6 and m.modalities == {"audio": 8, "text": 16, "visual": 12}
    assert json.loads((tiny_dir / "manifest.json").read_text())["fingerprint"] == m.fingerprint
    s = read_split(tiny_dir, "train")
    assert isinstance(s.features["text"], np.memmap)
    assert s.offsets[-1] == m.splits["train"].utterances == len(s.labels)
    assert not list(tiny_dir.rglob("*.pkl"))


def test_batch_contract(tiny_dir):
    data = MercData(tiny_dir, "AT")
    split = data["train"]
    b = split.batch([0, 3, 5])
    n = int(split.lengths[[0, 3, 5]].max())
    assert b.features["audio"].shape == (3, n, 8) and b.features["text"].shape == (3, n, 16)
    assert "visual" not in b.features and b.present.shape == (3, n, 2)
    assert b.mask.sum() == b.lengths.sum() == (b.labels != -100).sum()
    assert (b.features["text"][~b.mask] == 0).all()
    np.testing.assert_array_equal(b.features["text"][1, : b.lengths[1]].numpy(),
                                  split.arrays.dialogue(3).features["text"])
    assert data.meta.dims == {"audio": 8, "text": 16}


def test_missing_mask_rate_fixed_and_one_kept(tiny_dir):
    mask = fixed_missing_mask(1000, 3, 0.5, ("fp", "test", 0))
    assert mask.any(1).all()
    assert abs((~mask).mean() - 0.5) < 1e-3
    np.testing.assert_array_equal(mask, fixed_missing_mask(1000, 3, 0.5, ("fp", "test", 0)))
    assert not np.array_equal(mask, fixed_missing_mask(1000, 3, 0.5, ("fp", "test", 1)))
    data = MercData(tiny_dir, "ATV", missing_rate=0.6, seed=1)
    b1 = data["valid"].batch([0, 1])
    b2 = MercData(tiny_dir, "ATV", missing_rate=0.6, seed=1)["valid"].batch([0, 1])
    assert torch.equal(b1.present, b2.present)
    assert (b1.features["audio"][~b1.present[..., 0]] == 0).all()
    with pytest.raises(DatasetError, match="missing_rate"):
        MercData(tiny_dir, "AT", missing_rate=0.6)


def test_missing_mask_redraw_per_batch(tiny_dir):
    data = MercData(tiny_dir, "ATV", missing_rate=0.3, missing_redraw=True)
    g = torch.Generator().manual_seed(0)
    a = data["train"].batch([0, 1, 2], g).present
    b = data["train"].batch([0, 1, 2], g).present
    assert not torch.equal(a, b)
    assert torch.equal(data["valid"].batch([0]).present, data["valid"].batch([0]).present)


def test_modality_subsets_and_absent_modality(tmp_path, tiny_dir):
    for spec in ("A", "T", "V", "AT", "AV", "TV", "ATV", "tva"):
        assert set(MercData(tiny_dir, spec).meta.dims) == set(parse_modalities(spec))
    with pytest.raises(ValueError, match="unknown modality"):
        parse_modalities("AX")
    # a dataset without visual features says so clearly
    from merc.data.format import Manifest, write_dataset
    sp = generate("tiny", 0)
    for d in sum(sp.values(), []):
        d.features.pop("visual")
    write_dataset(tmp_path / "nov", Manifest(name="nov", family="iemocap6", num_classes=6,
                                             label_names=list("abcdef"),
                                             modalities={"audio": 8, "text": 16}, num_speakers=2,
                                             splits={}), sp)
    with pytest.raises(DatasetError, match="visual.*absent"):
        MercData(tmp_path / "nov", "ATV")


def test_resolve_data_caches(tmp_path):
    p1 = resolve_data("synthetic:tiny", cache_dir=tmp_path)
    p2 = resolve_data("synthetic:tiny", cache_dir=tmp_path)
    assert p1 == p2 and (p1 / "manifest.json").is_file()
    with pytest.raises(ValueError, match="unknown synthetic preset"):
        resolve_data("synthetic:nope", cache_dir=tmp_path)


def test_write_dataset_rejects_bad_shapes(tmp_path):
    from merc.data.format import Manifest, write_dataset
    sp = generate("tiny", 0)
    sp["train"][0].features["text"] = sp["train"][0].features["text"][:, :3]
    with pytest.raises(DatasetError, match="modality 'text': expected shape"):
        write_dataset(tmp_path / "bad", Manifest(name="x", family="iemocap6", num_classes=6,
                                                 label_names=list("abcdef"),
                                                 modalities={"audio": 8, "text": 16, "visual": 12},
                                                 num_speakers=2, splits={}), sp)
