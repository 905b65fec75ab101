"""MultiDAG (+ the bucket_cl strategy): the DAG against naive loops, the forward pass against a
literal re-implementation of the released loop, the released parameter counts, masks, causality,
Eq. (8) against a naive loop, the baby-step schedule, learning on small data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from merc.config import ConfigError
from merc.data.dataset import Batch, DatasetMeta, MercData
from merc.metrics import majority_wf1
from merc.models import build_model
from merc.models.multidag import MultiDAGConfig, dag_adjacency, dag_edges
from merc.strategies import build_strategy
from merc.strategies.bucket_cl import BucketCLConfig, dialogue_difficulty, make_buckets
from merc.train import fit, resolve_config

SMALL = {"hidden_size": 8, "dag_layers": 2, "dropout": 0.0}


def _meta(dims, C=3, S=3):
    return DatasetMeta("t", "iemocap6", tuple(dims), dict(dims), C, S, tuple("abcdefg"[:C]),
                       (1.0,) * C, "x")


def _random_batch(seed, dims=None, B=4, N=9, S=3):
    g = torch.Generator().manual_seed(seed)
    dims = dims or {"audio": 5, "text": 7, "visual": 3}
    lens = torch.randint(1, N + 1, (B,), generator=g)
    lens[0] = N
    mask = torch.arange(N)[None] < lens[:, None]
    spk = torch.randint(0, S, (B, N), generator=g) * mask
    feats = {m: torch.randn(B, N, d, generator=g) * mask[..., None] for m, d in dims.items()}
    labels = torch.where(mask, torch.randint(0, 3, (B, N), generator=g), -100)
    return Batch(feats, torch.ones(B, N, len(dims), dtype=torch.bool), mask, spk, labels, lens,
                 torch.arange(B)), dims


# ---- the graph ---------------------------------------------------------------------------------

def _naive_adj(speakers, lengths, N, window):
    """Released ``get_adj_v1`` / ``get_s_mask`` (dataset.py), loop for loop."""
    B = len(lengths)
    adj = torch.zeros(B, N, N, dtype=torch.bool)
    same = torch.zeros(B, N, N, dtype=torch.bool)
    for b in range(B):
        spk = speakers[b][:lengths[b]].tolist()
        for i, s in enumerate(spk):
            cnt = 0
            for j in range(i - 1, -1, -1):
                adj[b, i, j] = True
                if spk[j] == s:
                    cnt += 1
                    if cnt == window:
                        break
            for j in range(len(spk)):
                same[b, i, j] = spk[j] == s
    return adj, same


@pytest.mark.parametrize("window", [1, 2, 3, -1])
def test_dag_builder_matches_naive_loop(window):
    for seed in range(6):
        batch, _ = _random_batch(seed, B=5, N=12, S=1 + seed % 4)
        adj, same = dag_adjacency(batch.speakers, batch.mask, window)
        n_adj, n_same = _naive_adj(batch.speakers, batch.lengths.tolist(), 12, window)
        assert torch.equal(adj, n_adj) and torch.equal(same, n_same)
        ei, et = dag_edges(batch.speakers, batch.mask, window)
        flat = torch.full(batch.mask.shape, -1)
        flat[batch.mask] = torch.arange(int(batch.mask.sum()))
        want = sorted((int(flat[b, j]), int(flat[b, i]), 0 if n_same[b, i, j] else 1)
                      for b, i, j in n_adj.nonzero().tolist())
        got = sorted(zip(ei[0].tolist(), ei[1].tolist(), et.tolist()))
        assert got == want
        assert (ei[0] < ei[1]).all()                            # acyclic: sources come first


def test_dag_reaches_back_to_the_speakers_previous_turn():
    spk = torch.tensor([[0, 1, 1, 0, 2, 1]])
    adj, same = dag_adjacency(spk, torch.ones(1, 6, dtype=torch.bool), 1)
    preds = {i: adj[0, i].nonzero().flatten().tolist() for i in range(6)}
    assert preds == {0: [], 1: [0], 2: [1], 3: [0, 1, 2], 4: [0, 1, 2, 3], 5: [2, 3, 4]}
    assert same[0, 5, 2] and not same[0, 5, 3]


# ---- the network -------------------------------------------------------------------------------

def _released_forward(model, batch):
    """DAGERC_fushion.forward with GAT_dialoggcn_v1, written as released (1e30 masking, per-step
    Wr0/Wr1 on every predecessor), on this model's modules."""
    F = torch.nn.functional
    feats = model._features(batch)
    N = feats.shape[1]
    adj, s_mask = _naive_adj(batch.speakers, batch.lengths.tolist(), N,
                             model.config.speaker_window)
    adj, s_mask = adj.float(), s_mask.float()
    H = [F.relu(model.fc1(feats))]
    for lay in model.layers:
        Hl = H[-1]
        C = lay.grus_c(Hl[:, 0, :])
        P = lay.grus_p(torch.zeros_like(C), Hl[:, 0, :])
        H1 = (C + P).unsqueeze(1)
        for i in range(1, N):
            Q = Hl[:, i, :].unsqueeze(1).expand(-1, i, -1)
            alpha = lay.linear(torch.cat((Q, H1), 2)).permute(0, 2, 1)
            alpha = alpha - (1 - adj[:, i, :i].unsqueeze(1)) * 1e30
            w = F.softmax(alpha, dim=2)
            s = s_mask[:, i, :i].unsqueeze(2)
            V = lay.Wr0(H1) * s + lay.Wr1(H1) * (1 - s)
            M = torch.bmm(w, V).squeeze(1)
            out = lay.grus_c(Hl[:, i, :], M) + lay.grus_p(M, Hl[:, i, :])
            H1 = torch.cat((H1, out.unsqueeze(1)), 1)
        H.append(H1)
    H.append(feats)
    return model.out_mlp(torch.cat(H, 2))


@pytest.mark.parametrize("window", [1, 2, -1])
def test_forward_equals_released_loop(window):
    batch, dims = _random_batch(3)
    torch.manual_seed(0)
    model = build_model("multidag", MultiDAGConfig(**SMALL, speaker_window=window),
                        _meta(dims)).eval()
    with torch.no_grad():
        got = model(batch).logits
        want = _released_forward(model, batch)
    m = batch.mask
    assert torch.allclose(got[m], want[m], atol=1e-5), (got[m] - want[m]).abs().max()
    assert (got[~m] == 0).all()


def test_released_parameter_counts_at_iemocap_defaults():
    """vanntc711/MultiDAG-CL README: emb_dim 2948 = t1024 + a1582 + v342, gnn_layers 4, hidden 300,
    mlp_layers 2, 6 classes. Counts from the released module shapes (model.py, model_utils.py)."""
    _, cfg = resolve_config("multidag", {}, "iemocap6")
    assert (cfg.hidden_size, cfg.dag_layers, cfg.mlp_layers, cfg.dropout) == (300, 4, 2, 0.4)
    model = build_model("multidag", cfg, _meta({"text": 1024, "audio": 1582, "visual": 342}, C=6))

    def n(mod):
        return sum(p.numel() for p in mod.parameters())

    assert n(model.fc1) == 2948 * 300 + 300 == 884_700
    for lay in model.layers:
        assert n(lay.linear) == 601                              # Linear(600, 1)
        assert n(lay.Wr0) == n(lay.Wr1) == 90_000                # Linear(300, 300, bias=False)
        assert n(lay.grus_c) == n(lay.grus_p) == 541_800         # GRUCell(300, 300)
    assert [type(x).__name__ for x in model.out_mlp] == ["Linear", "ReLU", "Linear", "ReLU",
                                                         "Dropout", "Linear"]
    assert model.out_mlp[0].in_features == 300 * 5 + 2948        # (L+1) h + emb_dim
    assert n(model.out_mlp) == 1_334_700 + 90_300 + 1_806
    assert n(model) == 7_368_310
    # the released object also holds 4 unused `fcs` Linear(600, 300) and an unused
    # attentive_node_features Linear(4448, 4448): 721,200 + 19,789,152 dead parameters
    assert n(model) + 4 * 180_300 + 4448 * 4449 == 27_878_662


def test_padding_and_future_never_leak():
    batch, dims = _random_batch(5)
    torch.manual_seed(0)
    model = build_model("multidag", MultiDAGConfig(**SMALL), _meta(dims)).eval()
    with torch.no_grad():
        full = model(batch).logits
        # a dialogue alone gives the same logits as inside a padded batch
        b = 1
        n = int(batch.lengths[b])
        one = Batch({m: x[b:b + 1, :n] for m, x in batch.features.items()},
                    batch.present[b:b + 1, :n], batch.mask[b:b + 1, :n],
                    batch.speakers[b:b + 1, :n], batch.labels[b:b + 1, :n],
                    batch.lengths[b:b + 1], batch.index[b:b + 1])
        assert torch.allclose(model(one).logits[0], full[b, :n], atol=1e-5)
        # causality: changing utterance 5 of dialogue 0 changes nothing before it
        batch.features["text"][0, 5] += 3.0
        moved = model(batch).logits
    assert torch.allclose(moved[0, :5], full[0, :5], atol=1e-6)
    assert not torch.allclose(moved[0, 5], full[0, 5])


@pytest.mark.parametrize("kw", [{"modality_encoder": "paper", "encoder_size": 6},
                                {"use_relations": False, "classifier_reads_features": False}])
def test_variants_shapes_and_gradients(kw):
    batch, dims = _random_batch(7)
    torch.manual_seed(0)
    model = build_model("multidag", MultiDAGConfig(**SMALL, **kw), _meta(dims))
    out = model(batch)
    assert out.logits.shape == (*batch.mask.shape, 3) and out.modality_logits is None
    torch.nn.functional.cross_entropy(out.logits[batch.mask], batch.labels[batch.mask]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_config_errors_and_paper_defaults():
    with pytest.raises(ConfigError, match="speaker_window"):
        resolve_config("multidag", {"speaker_window": 0})
    with pytest.raises(ConfigError, match="cl_buckets"):
        resolve_config("multidag", {"strategy": "bucket_cl", "cl_buckets": 0})
    with pytest.raises(ConfigError, match="cl_bucket"):
        resolve_config("multidag", {"strategy": "bucket_cl", "cl_bucket": 5})
    train, cfg = resolve_config("multidag", {}, "meld")
    assert (train.lr, cfg.dropout, train.epochs, cfg.dag_layers) == (1e-5, 0.1, 60, 2)
    train, cfg = resolve_config("multidag", {}, "iemocap6")
    assert (train.lr, cfg.dropout, train.epochs, cfg.dag_layers) == (5e-4, 0.4, 30, 4)
    assert (train.batch_size, train.clip_grad_norm, train.class_weights) == (16, 5.0, False)


# ---- the curriculum ----------------------------------------------------------------------------

def _naive_dlf(speakers, labels):
    """Released ``cl.Dialog.cc``, loop for loop (labels -1 there, -100 here: one more value)."""
    per = {}
    for s, y in zip(speakers, labels):
        per.setdefault(s, []).append(y)
    shifts = sum(1 for seq in per.values() for a, b in zip(seq, seq[1:]) if a != b)
    n_sp = len(set(speakers))
    return (shifts + n_sp) / (len(labels) + n_sp)


def test_difficulty_matches_naive_loop():
    rng = np.random.default_rng(0)
    for trial in range(5):
        lens = rng.integers(1, 15, size=20)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        U = int(offsets[-1])
        spk = rng.integers(0, 1 + trial * 2, U)
        lab = rng.integers(-1, 4, U)
        lab[lab < 0] = -100
        got = dialogue_difficulty(offsets, spk, lab)
        want = [_naive_dlf(spk[a:b].tolist(), lab[a:b].tolist())
                for a, b in zip(offsets[:-1], offsets[1:])]
        assert np.allclose(got, want)
    # a hand example: speaker 0 says 1, 1, 2 (one shift), speaker 1 says 0, 3 (one shift)
    assert dialogue_difficulty([0, 5], [0, 1, 0, 1, 0], [1, 0, 1, 3, 2])[0] == (2 + 2) / (5 + 2)


def test_buckets_ceil_and_even():
    d = np.array([0.5, 0.1, 0.9, 0.1, 0.3, 0.7, 0.2])
    ceil = make_buckets(d, 3, "ceil")                 # ceil(7/3) = 3: sizes 3, 3, 1
    assert [b.tolist() for b in ceil] == [[1, 3, 6], [4, 0, 5], [2]]   # stable ties: 1 before 3
    assert [len(b) for b in make_buckets(d, 3, "even")] == [3, 2, 2]
    assert len(make_buckets(np.zeros(108), 15, "ceil")) == 14          # released: fewer than k


def test_baby_step_schedule_on_a_real_split(tiny_dir):
    split = MercData(tiny_dir, "ATV")["train"]
    cfg = resolve_config("multidag", {"strategy": "bucket_cl", "cl_buckets": 4})[0]
    st = build_strategy("bucket_cl", cfg.strategy_config)
    subsets = [st.epoch_subset(e, split) for e in range(6)]
    assert [len(s) for s in subsets] == [4, 8, 12, 16, 16, 16]        # 16 dialogues, k = 4
    assert all(set(a) < set(b) for a, b in zip(subsets[:3], subsets[1:4]))
    a = split.arrays
    dlf = dialogue_difficulty(a.offsets, a.speakers, a.labels)
    assert dlf[subsets[0]].max() <= dlf[sorted(set(subsets[1]) - set(subsets[0]))].min()
    assert st.epoch_end(5)["cl_fraction"] == 1.0
    slow = build_strategy("bucket_cl", BucketCLConfig(cl_buckets=2, cl_epochs_per_step=2))
    assert [len(slow.epoch_subset(e, split)) for e in range(5)] == [8, 8, 16, 16, 16]
    with pytest.raises(ValueError, match="cl_buckets=17 exceeds the 16 training dialogues"):
        build_strategy("bucket_cl", BucketCLConfig(cl_buckets=17)).epoch_subset(0, split)


def test_bucket_cl_trains_other_models(tiny_dir):
    """The curriculum uses only the epoch_subset hook, so any model trains with it: here an
    early-fusion graph model, a late-fusion backbone and MultiDAG, at their paper defaults."""
    data = MercData(tiny_dir, "ATV")
    for name in ("corect", "dialoguegcn", "multidag"):
        train, cfg = resolve_config(name, {"strategy": "bucket_cl", "cl_buckets": 2,
                                           "epochs": 2, "batch_size": 8, "threads": 1})
        res = fit(name, data, train, cfg)
        assert res.status == "completed", (name, res.reason)
        assert [h["cl_fraction"] for h in res.history] == [0.5, 1.0], name


def test_same_seed_same_metrics(tiny_dir):
    data = MercData(tiny_dir, "ATV")
    flat = {**SMALL, "epochs": 2, "threads": 1, "strategy": "bucket_cl", "cl_buckets": 3}
    runs = [fit("multidag", data, *resolve_config("multidag", flat | {"seed": s}))
            for s in (3, 3, 4)]
    losses = [[h["train_loss"] for h in r.history] for r in runs]
    assert losses[0] == losses[1] and losses[0] != losses[2]
    assert [h["val_wf1"] for h in runs[0].history] == [h["val_wf1"] for h in runs[1].history]


def test_multidag_beats_majority_clearly(small_dir):
    data = MercData(small_dir, "ATV")
    train, cfg = resolve_config("multidag", {"hidden_size": 32, "dag_layers": 2, "epochs": 5,
                                             "lr": 5e-3, "batch_size": 8, "threads": 1,
                                             "strategy": "bucket_cl", "cl_buckets": 4})
    res = fit("multidag", data, train, cfg)
    maj = majority_wf1(data["train"].arrays.labels, data["test"].arrays.labels)
    assert res.best["test_wf1"] > maj + 15, (res.best, maj)
