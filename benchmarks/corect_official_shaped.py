"""An "official-shaped" CORECT training step: the computation of the official code
(leson502/CORECT_EMNLP2023, ``reference_impls.md`` section 1), written here, at the same sizes and
with the same parameter count (17,703,074 at the IEMOCAP-6 defaults, as this project's model).

What it reproduces, because each costs time on CPU:

* text: ``nn.TransformerEncoder`` over the **padded** batch with **no** padding mask, then a Linear;
  audio / visual: Linear-ReLU-Linear-ReLU; a speaker embedding added to every modality;
* node features gathered by a Python loop over dialogues and modalities (``feature_packing``);
* the relational graph built per batch by the per-edge Python loop of the reference repos
  (``benchmarks.bench_graph.reference_graph``, the paper window, so the edge set equals this
  project's); PyG ``RGCNConv`` + ``TransformerConv`` (7 heads) + BatchNorm + leaky ReLU;
* the MulT cross-modal net on the **padded** ``[N, B, d]`` sequences with **no** mask: per ordered
  pair a 2-layer pre-norm encoder (input scaled by sqrt(d), the layer's first LayerNorm applied to
  query, key and value separately, explicit ``bmm`` attention), per target a 3-layer self-attention
  encoder, a final LayerNorm per encoder; real rows taken out by a Python loop;
* classifier Linear-ReLU-Dropout-Linear, ``log_softmax`` + NLL over the real utterances.

It is a timing reference, not a model of this project (it is not registered and never trained for
metrics); the official graph builder (string relation keys, one tensor per edge) and its batching
are slower than what is reproduced here, so the speed-ups measured against it are conservative.
"""
from __future__ import annotations

import math
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import RGCNConv, TransformerConv

from benchmarks.bench_graph import reference_graph


class _MulTAttention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, q, k, v):                      # [L, B, d] each
        L, B, d = q.shape
        S, H, dh = k.shape[0], self.heads, d // self.heads
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(q, w[:d], b[:d]) * dh ** -0.5
        k = F.linear(k, w[d:2 * d], b[d:2 * d])
        v = F.linear(v, w[2 * d:], b[2 * d:])
        q = q.contiguous().view(L, B * H, dh).transpose(0, 1)
        k = k.contiguous().view(S, B * H, dh).transpose(0, 1)
        v = v.contiguous().view(S, B * H, dh).transpose(0, 1)
        a = torch.softmax(torch.bmm(q, k.transpose(1, 2)).float(), dim=-1).type_as(q)
        o = torch.bmm(a, v).transpose(0, 1).contiguous().view(L, B, d)
        return self.out_proj(o)


class _MulTLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn = _MulTAttention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.ln = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(d)])

    def forward(self, x, xk=None, xv=None):
        r = x
        x = self.ln[0](x)
        if xk is None:
            x = self.attn(x, x, x)
        else:
            x = self.attn(x, self.ln[0](xk), self.ln[0](xv))
        x = r + x
        r = x
        return r + self.fc2(F.relu(self.fc1(self.ln[1](x))))


class _MulTEncoder(nn.Module):
    def __init__(self, d: int, heads: int, layers: int):
        super().__init__()
        self.scale = math.sqrt(d)
        self.layers = nn.ModuleList(_MulTLayer(d, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, x, xk=None, xv=None):
        x = self.scale * x
        if xk is not None:
            xk, xv = self.scale * xk, self.scale * xv
        for layer in self.layers:
            x = layer(x, xk, xv)
        return self.norm(x)


class OfficialShapedCorect(nn.Module):
    """See the module docstring. ``dims`` per modality in the order audio, text, visual."""

    def __init__(self, dims: dict[str, int], num_classes: int, num_speakers: int = 2,
                 hidden: int = 100, window: tuple[int, int] = (11, 9), dropout: float = 0.5,
                 gt_heads: int = 7):
        super().__init__()
        self.mods = list(dims)
        self.window = window
        h, M = hidden, len(dims)
        self.enc = nn.ModuleDict()
        for m, d in dims.items():
            if m == "text":
                heads = next((k for k in range(7, 15) if d % k == 0), 1)
                layer = nn.TransformerEncoderLayer(d, heads, dropout=dropout, batch_first=True)
                self.enc[m] = nn.Sequential(nn.TransformerEncoder(layer, 2), nn.Linear(d, h))
            else:
                self.enc[m] = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.speaker = nn.Embedding(num_speakers, h)
        self.rgcn = RGCNConv(h, h, 3 * M + M * (M - 1))
        self.gt = TransformerConv(h, h, heads=gt_heads, concat=True)
        self.bn = nn.BatchNorm1d(h * gt_heads)
        self.pairs = list(permutations(range(M), 2))
        self.cross = nn.ModuleDict({f"{j}{k}": _MulTEncoder(h, 2, 2) for j, k in self.pairs})
        self.mem = nn.ModuleList(_MulTEncoder(h * (M - 1), 2, 3) for _ in range(M))
        self.lin1 = nn.Linear(M * h * gt_heads + M * (M - 1) * h, h)
        self.drop = nn.Dropout(dropout)
        self.lin2 = nn.Linear(h, num_classes)

    def loss(self, batch) -> torch.Tensor:
        lengths = batch.lengths.tolist()
        B = len(lengths)
        emb = self.speaker(batch.speakers)
        xs = [self.enc[m](batch.features[m]) + emb for m in self.mods]   # padded, no mask
        nodes = torch.cat([x[j, :lengths[j]] for x in xs for j in range(B)])   # feature_packing
        edge_index, edge_type = reference_graph(lengths, len(xs), *self.window)
        g = self.rgcn(nodes, edge_index, edge_type)
        g = F.leaky_relu(self.bn(self.gt(g, edge_index)))
        U = sum(lengths)
        g = torch.cat([g[k * U:(k + 1) * U] for k in range(len(xs))], dim=-1)   # multi_concat
        seq = [x.permute(1, 0, 2) for x in xs]                                  # [N, B, h]
        outs = []
        for t in range(len(xs)):
            zs = [self.cross[f"{t}{s}"](seq[t], seq[s], seq[s]) for s in range(len(xs)) if s != t]
            outs.append(self.mem[t](torch.cat(zs, dim=2)))
        z = torch.cat(outs, dim=2).permute(1, 0, 2)
        z = torch.cat([z[j, :lengths[j]] for j in range(B)])
        logp = F.log_softmax(self.lin2(self.drop(F.relu(self.lin1(torch.cat([g, z], -1))))), 1)
        labels = torch.cat([batch.labels[j, :lengths[j]] for j in range(B)])
        return F.nll_loss(logp, labels, ignore_index=-100)
