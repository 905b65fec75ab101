""""Official-shaped" training steps of the four SPCL backbones as released (the SPCL copy,
mattam301/experimental_MM_bachbones@ccce08f, ``code/model.py``, ``code/train.py``,
``code/backbone/{MMGCN,MM_DFN,dialogueGCN,BiDDIN,GCN,encoder}.py``; ``reference_impls.md``
section 5), written here at the same sizes and with the same parameter count as this project's
backbones at ``encoder: released`` (pinned in ``tests/test_backbones.py``; checked against the
models in ``tests/test_spcl_official_shaped.py``).

What it reproduces, because each costs time on CPU:

* every backbone's per-modality input-width Transformer encoders run over the **padded** batch with
  **no** padding mask (``nn.TransformerEncoder`` at width d, FFN 2048, then ``Linear(d, hidden)``);
  node features gathered by a Python loop over dialogues (``simple_batch_graphify``);
* MMGCN / MM-DFN: the "big adjacency" of ``create_big_adj``: one dense [M U, M U] zero matrix,
  filled per dialogue and modality pair by slice and index assignment (the within-modality cosine
  matrix as the sum of a [hidden, n, n] outer product, arccos, the cross-modal diagonal per pair),
  then D^-1/2 A D^-1/2 as two dense ``mm`` with a dense diagonal; gradients flow through it into the
  encoders; ``GCNII_lyc`` (variant) with dense ``adj @ h``; MM-DFN's ``MMGatedAttention``;
* DialogueGCN: per modality ``edge_perms`` (Python sets) per dialogue, ``EdgeAtt`` filling a
  [max_len, 110] attention table per dialogue utterance by utterance, ``batch_graphify`` building
  one tensor per edge, one autograd scalar per edge weight and string relation keys, PyG
  ``RGCNConv(num_bases=30)`` + ``GraphConv`` with the edge weights, the classifier;
* BiDDIN: per modality a bidirectional DialogueRNN stepping over the padded time axis with one-hot
  speaker masks, a Python loop over the batch to select parties (``_select_parties``, twice per
  step), the party GRU run for every party, the global history grown by ``torch.cat`` and
  re-attended (with positions) every step, the backward direction built by a per-dialogue flip
  loop (``_reverse_seq``), then the release's multi-head attention without a mask;
* the SPCL loss of ``Model.get_loss`` every step: joint NLL per utterance, per-modality NLLs (read
  with ``.item()`` as the released loop does), the per-utterance Python loops for the dialogue
  scores and the batch ratios, the harmonic-mean difficulty and hard weights, ``(loss * v).mean()``;
  ``clip_grad_norm_(2)``, Adam (lr 2e-4, weight decay 1e-8).

It is a timing reference, not a model of this project (not registered, never trained for metrics).
Where the released code is slower than needed for no reason, the reference keeps the cheaper form,
so speed-ups measured against it are conservative: the per-utterance softmax of ``get_loss`` is
computed once per modality (the release recomputes the whole softmax for every utterance), the
batches are this project's (the released loader's Python padding is not timed).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch_geometric.nn import GraphConv, RGCNConv

#: the released training loop: Adam(lr, weight_decay), clip_grad_norm_(max_norm=2, norm_type=2)
RELEASED_TRAIN = {"lr": 2e-4, "weight_decay": 1e-8, "batch_size": 16, "grad_norm_max": 2.0,
                  "grad_norm": 2.0}


def _heads(d: int) -> int:
    """The released encoder's head rule: the first h in 5..14 dividing d, else 1."""
    return next((h for h in range(5, 15) if d % h == 0), 1)


class _Encoder(nn.Module):
    """Transformer layers at the input width (no padding mask), then Linear(d, hidden)."""

    def __init__(self, d: int, hidden: int, layers: int, dropout: float, heads: int):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, dropout=dropout, batch_first=True)
        self.tf = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(d, hidden)

    def forward(self, x):
        return self.out(self.tf(x))


def _graphify(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Real rows of a padded [B, N, c] batch, one slice per dialogue."""
    return torch.cat([x[j, :n] for j, n in enumerate(lengths)])


# ---- MMGCN / MM-DFN ----------------------------------------------------------------------------

def big_adjacency(feats: list[torch.Tensor], lengths: list[int]) -> torch.Tensor:
    """``create_big_adj``: dense normalised multimodal adjacency over modality-major nodes."""
    M, U = len(feats), feats[0].shape[0]
    adj = torch.zeros(M * U, M * U)
    start = 0
    for n in lengths:
        blocks = []
        for x in feats:
            sub = torch.zeros(n, n)
            t = x[start:start + n]
            nt = t.permute(1, 0) / torch.sqrt((t * t).sum(1))             # [c, n]
            cos = torch.matmul(nt.unsqueeze(2), nt.unsqueeze(1)).sum(0) * 0.99999   # [n, n]
            sub[:n, :n] = 1 - torch.acos(cos) / np.pi
            blocks.append(sub)
        diag = np.array(np.diag_indices(n))
        for a in range(M):
            for b in range(M):
                r0, c0 = start + U * a, start + U * b
                if a == b:
                    adj[r0:r0 + n, c0:c0 + n] = blocks[a]
                    continue
                xa, xb = feats[a][start:start + n], feats[b][start:start + n]
                na = xa.permute(1, 0) / torch.sqrt((xa * xa).sum(1))
                nb = xb.permute(1, 0) / torch.sqrt((xb * xb).sum(1))
                cos = (na * nb).permute(1, 0).sum(1) * 0.99999
                idx = diag.copy()
                idx[0] += r0
                idx[1] += c0
                adj[idx[0], idx[1]] = 1 - torch.acos(cos) / np.pi
        start += n
    D = torch.diag(torch.pow(adj.sum(1), -0.5))
    return D.mm(adj).mm(D)


class _GCNIIConv(nn.Module):
    """GCNII ``GraphConvolution`` in its variant form: weight [2c, c], U(-1/sqrt(c), 1/sqrt(c))."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(2 * c, c).uniform_(-1 / math.sqrt(c), 1 / math.sqrt(c)))

    def forward(self, h, adj, h0, lam, alpha, layer):
        theta = math.log(lam / layer + 1)
        hi = torch.spmm(adj, h)
        r = (1 - alpha) * hi + alpha * h0
        return theta * torch.mm(torch.cat([hi, h0], 1), self.weight) + (1 - theta) * r


class OfficialShapedMMGCN(nn.Module):
    """The SPCL copy's MMGCN (see the module docstring); ``logits(batch)`` -> joint, {m: z^m}."""

    def __init__(self, dims: dict[str, int], num_classes: int, num_speakers: int = 2,
                 hidden: int = 200, layers: int = 2, dropout: float = 0.5):
        super().__init__()
        self.mods, self.dropout, h = list(dims), dropout, hidden
        self.enc = nn.ModuleDict({m: _Encoder(d, h, layers, dropout, _heads(d))
                                  for m, d in dims.items()})
        self.speaker = nn.Embedding(num_speakers, h)                    # created, never applied
        self.fc0 = nn.Linear(h, h)                                      # GCNII_lyc fcs[0]
        self.convs = nn.ModuleList(_GCNIIConv(h) for _ in range(layers))
        self.uni_fc = self.heads(h, num_classes)

    def heads(self, h: int, C: int) -> nn.ModuleDict:
        return nn.ModuleDict({m: nn.Linear(2 * h, C) for m in self.mods})

    def graph(self, batch) -> list[torch.Tensor]:
        """Encoders, graphify, big adjacency, GCNII_lyc: per-modality [U, 2h] node features."""
        lengths = batch.lengths.tolist()
        reps = [_graphify(self.enc[m](batch.features[m]), lengths) for m in self.mods]
        adj = big_adjacency(reps, lengths)
        x = F.dropout(torch.cat(reps, 0), self.dropout, self.training)
        h0 = F.relu(self.fc0(x))
        h = h0
        for i, conv in enumerate(self.convs):
            h = F.dropout(h, self.dropout, self.training)
            h = F.relu(conv(h, adj, h0, 0.5, 0.1, i + 1))
        h = torch.cat([x, F.dropout(h, self.dropout, self.training)], -1)
        U = reps[0].shape[0]
        return [h[k * U:(k + 1) * U] for k in range(len(self.mods))]

    def logits(self, batch):
        z = {m: self.uni_fc[m](r) for m, r in zip(self.mods, self.graph(batch))}
        return torch.stack(list(z.values())).sum(0), z


class OfficialShapedMMDFN(OfficialShapedMMGCN):
    """The SPCL copy's MM-DFN: MMGCN's graph, then ``MMGatedAttention`` and Linear(h, C) heads."""

    def __init__(self, dims: dict[str, int], num_classes: int, num_speakers: int = 2,
                 hidden: int = 200, layers: int = 2, dropout: float = 0.5):
        super().__init__(dims, num_classes, num_speakers, hidden, layers, dropout)
        M = len(dims)
        self.transform = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(M))
        self.cross = nn.ModuleDict({f"{i}{j}": nn.Linear(3 * hidden, hidden)
                                    for i in range(M) for j in range(M) if i != j})

    def heads(self, h: int, C: int) -> nn.ModuleDict:
        return nn.ModuleDict({m: nn.Linear(h, C) for m in self.mods})

    def logits(self, batch):
        g = self.graph(batch)
        hx = [F.dropout(F.relu(t(x)), 0.5, self.training) for t, x in zip(self.transform, g)]
        out = []
        for i, hi in enumerate(hx):
            acc = []
            for j, hj in enumerate(hx):
                if i != j:
                    z = torch.sigmoid(self.cross[f"{i}{j}"](torch.cat([hi, hj, hi * hj], -1)))
                    acc.append(z * hi + (1 - z) * hj)
            out.append(torch.stack(acc).sum(0))
        z = {m: self.uni_fc[m](o) for m, o in zip(self.mods, out)}
        return torch.stack(list(z.values())).sum(0), z


# ---- DialogueGCN -------------------------------------------------------------------------------

def edge_perms(n: int, wp: int, wf: int) -> list[tuple[int, int]]:
    """Edges (j, k) for k in [j - wp, j + wf] (inclusive), built with Python sets as released."""
    out: set[tuple[int, int]] = set()
    arr = np.arange(n)
    for j in range(n):
        out |= {(j, int(k)) for k in arr[max(0, j - wp):min(n, j + wf + 1)]}
    return list(out)


class _DialogueGCNBranch(nn.Module):
    def __init__(self, d: int, g: int, h: int, C: int, S: int, wp: int, wf: int, layers: int,
                 dropout: float):
        super().__init__()
        self.wp, self.wf = wp, wf
        self.enc = _Encoder(d, g, layers, dropout, 1)                   # SeqContext, trans_head 1
        self.att = nn.Parameter(torch.zeros(g, g).normal_(0, 2.0 / (2 * g)))   # EdgeAtt
        self.rgcn = RGCNConv(g, h, 2 * S * S, num_bases=30)
        self.gconv = GraphConv(h, h)
        self.lin1, self.lin2 = nn.Linear(g + h, h), nn.Linear(h, C)
        self.drop = nn.Dropout(dropout)
        self.rel = {f"{a}{b}{c}": 2 * (S * a + b) + c for a in range(S) for b in range(S)
                    for c in range(2)}

    def edge_att(self, x, lengths):
        B, L = x.shape[:2]
        att = torch.matmul(self.att[None, None], x.unsqueeze(-1)).squeeze(-1)   # [B, L, g]
        tables = []
        for i in range(B):
            n = lengths[i]
            a = torch.zeros(L, 110)
            for j in range(n):
                s, e = max(0, j - self.wp), min(n - 1, j + self.wf)
                a[j, s:e + 1] = F.softmax(torch.matmul(att[i, s:e + 1], x[i, j]), -1)
            tables.append(a)
        return tables

    def forward(self, x, lengths: list[int], speakers: torch.Tensor):
        g = self.enc(x)                                                 # [B, L, g], padded
        alphas = self.edge_att(g, lengths)
        nodes, ei, norm, types, off = [], [], [], [], 0
        for j, n in enumerate(lengths):
            nodes.append(g[j, :n])
            for a, b in edge_perms(n, self.wp, self.wf):
                ei.append(torch.tensor([a + off, b + off]))
                norm.append(alphas[j][a, b])
                key = f"{speakers[j, a].item()}{speakers[j, b].item()}{0 if a < b else 1}"
                types.append(self.rel[key])
            off += n
        nodes = torch.cat(nodes)
        ei = torch.stack(ei).t().contiguous()
        h = self.rgcn(nodes, ei, torch.tensor(types).long())
        h = self.gconv(h, ei, torch.stack(norm))
        return self.lin2(self.drop(F.relu(self.lin1(torch.cat([nodes, h], -1)))))


class OfficialShapedDialogueGCN(nn.Module):
    """The SPCL copy's ``MultiDialogueGCN``: one DialogueGCN per modality, logits summed."""

    def __init__(self, dims: dict[str, int], num_classes: int, num_speakers: int = 2,
                 hidden: int = 200, hidden2: int = 150, wp: int = 2, wf: int = 2,
                 layers: int = 2, dropout: float = 0.5):
        super().__init__()
        self.mods = list(dims)
        self.S = num_speakers
        self.br = nn.ModuleDict({m: _DialogueGCNBranch(d, hidden, hidden2, num_classes,
                                                       num_speakers, wp, wf, layers, dropout)
                                 for m, d in dims.items()})

    def logits(self, batch):
        lengths = batch.lengths.tolist()
        spk = batch.speakers.clamp(0, self.S - 1)
        z = {m: self.br[m](batch.features[m], lengths, spk) for m in self.mods}
        return torch.stack(list(z.values())).sum(0), z


# ---- BiDDIN ------------------------------------------------------------------------------------

def _positions(T: int, d: int) -> torch.Tensor:
    pos = torch.arange(T, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(T, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div[: d // 2])
    return pe


def _select(q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``_select_parties``: one row per dialogue, by a Python loop over the batch."""
    return torch.cat([row[i].unsqueeze(0) for i, row in zip(idx, q)], 0)


class _DialogueRNN(nn.Module):
    def __init__(self, d_m: int, d_g: int, d_p: int, d_e: int, dropout: float):
        super().__init__()
        self.d_g, self.d_p, self.d_e = d_g, d_p, d_e
        self.g_cell = nn.GRUCell(d_m + d_p, d_g)
        self.p_cell = nn.GRUCell(d_m + d_g, d_p)
        self.e_cell = nn.GRUCell(d_p, d_e)
        self.scalar = nn.Linear(d_g, 1, bias=False)                     # SimpleAttention
        self.drop, self.pe_drop = nn.Dropout(dropout), nn.Dropout(0.1)

    def forward(self, U: torch.Tensor, qmask: torch.Tensor) -> torch.Tensor:
        """U [T, B, d_m], qmask one-hot [T, B, P] -> emotions [T, B, d_e]."""
        T, B, P = qmask.shape
        pe = _positions(T, self.d_g)[:, None]
        g_hist, q, e, es = torch.zeros(0), torch.zeros(B, P, self.d_p), None, []
        for t in range(T):
            u, qm = U[t], qmask[t]
            idx = torch.argmax(qm, 1)
            prev = torch.zeros(B, self.d_g) if g_hist.shape[0] == 0 else g_hist[-1]
            g = self.drop(self.g_cell(torch.cat([u, _select(q, idx)], 1), prev))
            if g_hist.shape[0] == 0:
                c = torch.zeros(B, self.d_g)
            else:
                mem = self.pe_drop(g_hist + pe[:g_hist.shape[0]])
                alpha = F.softmax(self.scalar(mem), dim=0).permute(1, 2, 0)
                c = torch.bmm(alpha, mem.transpose(0, 1))[:, 0]
            uc = torch.cat([u, c], 1).unsqueeze(1).expand(-1, P, -1)
            qs = self.p_cell(uc.contiguous().view(-1, uc.shape[-1]), q.view(-1, self.d_p))
            qs = self.drop(qs.view(B, P, self.d_p))
            q = q * (1 - qm.unsqueeze(2)) + qs * qm.unsqueeze(2)
            e = self.drop(self.e_cell(_select(q, idx), torch.zeros(B, self.d_e) if e is None else e))
            g_hist = torch.cat([g_hist, g.unsqueeze(0)], 0)
            es.append(e.unsqueeze(0))
        return torch.cat(es, 0)


def _reverse(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """``_reverse_seq``: flip each dialogue's real steps, re-pad (time-major)."""
    return pad_sequence([torch.flip(s[:n], [0]) for s, n in zip(x.transpose(0, 1), lengths)])


class _BiModel(nn.Module):
    def __init__(self, d_m, d_g, d_p, d_e, d_h, C, dropout, heads: int = 4):
        super().__init__()
        E = 2 * d_e
        self.heads = heads
        self.fwd = _DialogueRNN(d_m, d_g, d_p, d_e, dropout)
        self.bwd = _DialogueRNN(d_m, d_g, d_p, d_e, dropout)
        self.transform = nn.Linear(E, E, bias=False)                    # created, never used
        self.w_q, self.w_k, self.w_v = (nn.Linear(E, E, bias=False) for _ in range(3))
        self.fc = nn.Linear(E, E, bias=False)
        self.linear = nn.Linear(E, 2 * d_h)
        self.smax_fc = nn.Linear(2 * d_h, C)
        self.drop, self.pe_drop = nn.Dropout(dropout), nn.Dropout(0.1)

    def forward(self, U, qmask, lengths):
        T, B, _ = U.shape
        ef = self.drop(self.fwd(U, qmask))
        eb = self.bwd(_reverse(U, lengths), _reverse(qmask, lengths))
        eb = self.drop(_reverse(eb, lengths))
        emo = self.pe_drop(torch.cat([ef, eb], -1) + _positions(T, ef.shape[-1] * 2)[:, None])
        E, H = emo.shape[-1], self.heads
        dh = E // H
        q, k, v = (w(emo).view(B, T, H, dh).transpose(1, 2) for w in (self.w_q, self.w_k, self.w_v))
        a = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1)      # no mask, as released
        ctx = (a @ v).transpose(1, 2).contiguous().view(T, B, E)
        att = F.layer_norm(self.fc(ctx) + emo, (E,))
        hidden = self.drop(F.relu(self.linear(att)))
        return self.smax_fc(hidden)                                     # [T, B, C]


class OfficialShapedBiDDIN(nn.Module):
    """The SPCL copy's ``MultiBiModel``: one ``BiModel_single`` per modality, logits summed."""

    def __init__(self, dims: dict[str, int], num_classes: int, num_speakers: int = 2,
                 d_g: int = 200, d_p: int = 150, d_e: int = 100, d_h: int = 100,
                 dropout: float = 0.5):
        super().__init__()
        self.mods, self.P = list(dims), num_speakers
        self.bm = nn.ModuleDict({m: _BiModel(d, d_g, d_p, d_e, d_h, num_classes, dropout)
                                 for m, d in dims.items()})
        self.uni_fc = nn.ModuleDict({m: nn.Linear(d_h, num_classes) for m in dims})   # unused

    def logits(self, batch):
        lengths = batch.lengths.tolist()
        qmask = F.one_hot(batch.speakers.clamp(0, self.P - 1), self.P).float().transpose(0, 1)
        z = {}
        for m in self.mods:
            out = self.bm[m](batch.features[m].transpose(0, 1), qmask, lengths)   # [T, B, C]
            z[m] = _graphify(out.transpose(0, 1), lengths)
        return torch.stack(list(z.values())).sum(0), z


# ---- SPCL loss and the training step -----------------------------------------------------------

OFFICIAL = {"mmgcn": OfficialShapedMMGCN, "mmdfn": OfficialShapedMMDFN,
            "dialoguegcn": OfficialShapedDialogueGCN, "biddin": OfficialShapedBiDDIN}


def build(name: str, dims: dict[str, int], num_classes: int, num_speakers: int = 2) -> nn.Module:
    """The official-shaped network of backbone ``name`` at the released defaults."""
    return OFFICIAL[name](dict(dims), num_classes, max(num_speakers, 1))


def spcl_get_loss(joint, z: dict[str, torch.Tensor], labels: torch.Tensor, lengths: list[int],
                  threshold: float):
    """``Model.get_loss`` (released, ``--use_cl``, hard regulariser): (loss, ratio, kept, loss_m)."""
    prob = F.log_softmax(joint, -1)
    loss = F.nll_loss(prob, labels, reduction="none")
    loss_m = {m: F.nll_loss(F.log_softmax(zm, -1), labels) for m, zm in z.items()}
    with torch.no_grad():
        ends = [0] + np.cumsum(lengths).tolist()
        sm = {m: F.softmax(zm, 1) for m, zm in z.items()}   # hoisted: the release recomputes it
        per_mod = [torch.stack([torch.sum(torch.stack([sm[m][i][labels[i]]
                                                       for i in range(ends[j - 1], ends[j])]))
                                for j in range(1, len(ends))]) for m in z]
        dial = torch.stack(per_mod, 0).std(0)
        score = torch.zeros(prob.shape[0])
        for j in range(1, len(ends)):
            score[ends[j - 1]:ends[j]].fill_(dial[j - 1])
        v = ((2 / (1 / score + 1 / loss)) <= threshold).int()
        batch_score = {m: sum(sm[m][i][labels[i]] * v[i] for i in range(prob.shape[0])) for m in z}
        low = min(batch_score.values())
        ratio = {m: s / low for m, s in batch_score.items()}
    loss = loss * v
    return loss.mean(), ratio, torch.sum(v), loss_m


def make_stepper(model: nn.Module, threshold: float = 0.4, lr: float = RELEASED_TRAIN["lr"]):
    """step(batch) -> float loss: the released train loop's body (get_loss, the ``.item()`` reads,
    backward, ``clip_grad_norm_(2)``, Adam)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=RELEASED_TRAIN["weight_decay"])
    model.train()

    def step(batch) -> float:
        model.zero_grad()
        lengths = batch.lengths.tolist()
        labels = _graphify(batch.labels[..., None], lengths)[:, 0]
        joint, z = model.logits(batch)
        nll, _, _, loss_m = spcl_get_loss(joint, z, labels, lengths, threshold)
        value = nll.item()
        for m in loss_m:
            loss_m[m].item()
        nll.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=RELEASED_TRAIN["grad_norm_max"],
                                       norm_type=RELEASED_TRAIN["grad_norm"])
        opt.step()
        return value
    return step
