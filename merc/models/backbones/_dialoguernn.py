"""The released SPCL copy's BiDDIN branch (``BiModel_single``): a bidirectional DialogueRNN with
self-attention, one per modality. The equations are in :mod:`merc.models.backbones.biddin`.

DialogueRNN: Majumder et al., "DialogueRNN: An Attentive RNN for Emotion Detection in
Conversations", AAAI 2019 (Eqs. (1)-(4): global state, context attention, party state, emotion
state), the cell BiDDIN (Zhang et al., ACM MM 2020) and the SPCL copy build on. The cells step
through the utterances one at a time (that is the model) but all dialogues of a batch step together.

``kernels="fused"`` (:func:`dialogue_rnns_fused`, the default) computes the same cells for all
modalities and both directions at once: the utterance parts of the global / party GRUs' input
projections for every step in one matmul per modality (on the real utterances only), then one loop
over time whose steps batch the 2 M chains with ``bmm`` over stacked weights (GRU cells written
out, ``torch.nn.GRUCell``'s equations), party states selected by ``gather`` and replaced by
``where``; the dropouts draw one fp32 uniform per element (same distribution as ``nn.Dropout``).
Equal to the module path to float rounding (``tests/test_backbones_fused.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.backbones._common import _heads_for, bf16_autocast, dropout
from merc.models.packed import Packing


def sinusoid(length: int, dim: int, device) -> torch.Tensor:
    """The release's ``PositionalEncoding`` table P [length, dim] (sin on even, cos on odd dims)."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    div = torch.pow(10000.0, torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    p = torch.zeros(length, dim, device=device)
    p[:, 0::2] = torch.sin(pos / div)
    p[:, 1::2] = torch.cos(pos / div[: dim // 2])
    return p


class DialogueRNN(nn.Module):
    """One direction: ``DialogueRNNCell`` (listener state off, "simple" attention) over [T, B, D_m]."""

    def __init__(self, d_m: int, d_g: int, d_p: int, d_e: int, dropout: float):
        super().__init__()
        self.d_g, self.d_p, self.d_e = d_g, d_p, d_e
        self.g_cell = nn.GRUCell(d_m + d_p, d_g)                    # DialogueRNN Eq. (1)
        self.p_cell = nn.GRUCell(d_m + d_g, d_p)                    # Eq. (3)
        self.e_cell = nn.GRUCell(d_p, d_e)                          # Eq. (4)
        self.attention = nn.Linear(d_g, 1, bias=False)              # SimpleAttention, Eq. (2)
        self.drop = nn.Dropout(dropout)
        self.pe_drop = nn.Dropout(0.1)

    def forward(self, u: torch.Tensor, speakers: torch.Tensor, num_parties: int) -> torch.Tensor:
        T, B, _ = u.shape
        rows = torch.arange(B, device=u.device)
        q = u.new_zeros(B, num_parties, self.d_p)
        g_prev, e = u.new_zeros(B, self.d_g), u.new_zeros(B, self.d_e)
        pe = sinusoid(T, self.d_g, u.device)[:, None]
        hist, out = [], []
        for t in range(T):
            s = speakers[t]
            q_sel = q[rows, s]
            g = self.drop(self.g_cell(torch.cat([u[t], q_sel], -1), g_prev))   # Eq. (1)
            if t == 0:
                c = u.new_zeros(B, self.d_g)
            else:                                                    # Eq. (2) over g_1..g_{t-1}
                mem = self.pe_drop(torch.stack(hist) + pe[:t])
                c = (torch.softmax(self.attention(mem), dim=0) * mem).sum(0)
            # Eq. (3): only the speaker's party state changes (the release updates every party and
            # keeps the speaker's row; the others are discarded, so they are not computed here)
            q_new = self.drop(self.p_cell(torch.cat([u[t], c], -1), q_sel))
            onehot = F.one_hot(s, num_parties).to(u.dtype)[..., None]
            q = q * (1 - onehot) + q_new[:, None] * onehot
            e = self.drop(self.e_cell(q_new, e))                     # Eq. (4)
            hist.append(g)
            g_prev = g
            out.append(e)
        return torch.stack(out)                                      # [T, B, D_e]


def reverse_index(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """[T, B] index that reverses each dialogue's real utterances and leaves padding in place (the
    release's ``_reverse_seq``); applying it twice is the identity."""
    t = torch.arange(T, device=lengths.device)[:, None]
    L = lengths.to(t.device)[None, :]
    return torch.where(t < L, L - 1 - t, t)


class BiModelSingle(nn.Module):
    """``BiModel_single``: forward + backward DialogueRNN, positional encoding, 4-head self-attention,
    ReLU-Linear classifier (see :mod:`merc.models.backbones.biddin`)."""

    def __init__(self, d_m: int, d_g: int, d_p: int, d_e: int, d_h: int, num_classes: int,
                 dropout: float, heads: int = 4):
        super().__init__()
        E = 2 * d_e
        self.rnn_f = DialogueRNN(d_m, d_g, d_p, d_e, dropout)
        self.rnn_r = DialogueRNN(d_m, d_g, d_p, d_e, dropout)
        self.heads = _heads_for(E, heads)
        self.transform = nn.Linear(E, E, bias=False)   # released query transform, never used
        self.w_q = nn.Linear(E, E, bias=False)
        self.w_k = nn.Linear(E, E, bias=False)
        self.w_v = nn.Linear(E, E, bias=False)
        self.fc = nn.Linear(E, E, bias=False)
        self.linear = nn.Linear(E, 2 * d_h)
        self.smax_fc = nn.Linear(2 * d_h, num_classes)
        self.drop = nn.Dropout(dropout)
        self.pe_drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, speakers: torch.Tensor, mask: torch.Tensor,
                lengths: torch.Tensor, num_parties: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, d], speakers [B, T] -> (logits [B, T, C], hidden [B, T, 2 D_h])."""
        T = x.shape[1]
        u, spk = x.transpose(0, 1), speakers.transpose(0, 1)         # time-major
        ef = self.drop(self.rnn_f(u, spk, num_parties))
        rev = reverse_index(lengths, T)
        u_r = u.gather(0, rev[..., None].expand_as(u))
        er = self.rnn_r(u_r, spk.gather(0, rev), num_parties)
        return self.head(ef, self.drop(er.gather(0, rev[..., None].expand_as(er))), mask)

    def head(self, ef: torch.Tensor, er: torch.Tensor, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dropped-out emotion states of both directions [T, B, D_e] (time order) -> logits,
        hidden."""
        B, T = mask.shape
        emo = torch.cat([ef, er], -1).transpose(0, 1)                # [B, T, 2 D_e]
        emo = self.pe_drop(emo + sinusoid(T, emo.shape[-1], emo.device))
        H, dh = self.heads, emo.shape[-1] // self.heads
        q, k, v = (w(emo).view(B, T, H, dh).transpose(1, 2) for w in (self.w_q, self.w_k, self.w_v))
        score = q @ k.transpose(-1, -2) / math.sqrt(dh)
        score = score.masked_fill(~mask[:, None, None, :], float("-inf"))
        ctx = (torch.softmax(score, -1) @ v).transpose(1, 2).reshape(B, T, -1)
        att = F.layer_norm(self.fc(ctx) + emo, emo.shape[-1:])       # fresh LayerNorm: no affine
        hidden = self.drop(torch.relu(self.linear(att)))
        return self.smax_fc(hidden), hidden


def _gru(xi: torch.Tensor, hh: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``nn.GRUCell`` for K chains at once from its two projections: xi = x W_ih^T + b_ih and
    hh = h W_hh^T + b_hh [K, B, 3H]; h [K, B, H]."""
    ir, iz, i_n = xi.chunk(3, -1)
    hr, hz, h_n = hh.chunk(3, -1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)                                          # (1 - z) n + z h


def dialogue_rnns_fused(models: list[BiModelSingle], xs: list[torch.Tensor],
                        speakers: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor,
                        num_parties: int, bf16: bool = False
                        ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Both directions' emotion states (time order, [T, B, D_e] each, zero at padding) of every
    model: the recursion of :class:`DialogueRNN` for all 2 M chains at once (module docstring).

    Dialogues are sorted by length and step t runs only the n_t dialogues longer than t (as
    ``pack_padded_sequence``): a dialogue's padded steps come after its real ones in both
    directions, so the module path's padded steps never reach a real position either."""
    B, T = mask.shape
    pk = Packing(mask)
    order = torch.argsort(lengths, descending=True, stable=True)
    L = lengths[order]
    live = [int(v) for v in (L[None, :] > torch.arange(T, device=L.device)[:, None]).sum(1)]
    rev = reverse_index(L, T)                                       # [T, B], sorted dialogues
    spk_f = speakers[order].transpose(0, 1)
    spk_r = spk_f.gather(0, rev)
    cells = [c for m in models for c in (m.rnn_f, m.rnn_r)]         # chain k: model k // 2
    first = cells[0]
    d_g, d_p, K = first.d_g, first.d_p, len(cells)
    gs, ps = [], []
    for m, x in zip(models, xs):                                    # utterance parts, all steps
        d_m = x.shape[-1]
        pair = (m.rnn_f, m.rnn_r)
        w = torch.cat([c.g_cell.weight_ih[:, :d_m] for c in pair]
                      + [c.p_cell.weight_ih[:, :d_m] for c in pair])
        b = torch.cat([c.g_cell.bias_ih for c in pair] + [c.p_cell.bias_ih for c in pair])
        with bf16_autocast(x.device, bf16):
            proj = F.linear(pk.unpad(x), w, b).float()
        proj = pk.pad(proj).index_select(0, order).transpose(0, 1)  # [T, B, 6 (D_g + D_p)]
        g_f, g_r, p_f, p_r = proj.split([3 * d_g, 3 * d_g, 3 * d_p, 3 * d_p], -1)
        gs += [g_f, g_r.gather(0, rev[..., None].expand_as(g_r))]
        ps += [p_f, p_r.gather(0, rev[..., None].expand_as(p_r))]
    G, P = torch.stack(gs, 1), torch.stack(ps, 1)                   # [T, K, B, 3 D_g / 3 D_p]
    d_ms = [x.shape[-1] for x in xs for _ in range(2)]

    def stack(f):
        w = torch.stack([f(c, d) for c, d in zip(cells, d_ms)])
        return w.to(torch.bfloat16) if bf16 else w                 # cast once, not per step
    # q_sel's parts: Eq. (1)'s input (u_t ; q) and Eq. (3)'s hidden state, one matmul
    w_q = torch.cat([stack(lambda c, d: c.g_cell.weight_ih[:, d:].t()),
                     stack(lambda c, d: c.p_cell.weight_hh.t())], -1)   # [K, D_p, 3 D_g + 3 D_p]
    wh_g, wc_p = stack(lambda c, d: c.g_cell.weight_hh.t()), stack(
        lambda c, d: c.p_cell.weight_ih[:, d:].t())                 # [K, D_g, 3 D_g / 3 D_p]
    wi_e, wh_e = stack(lambda c, d: c.e_cell.weight_ih.t()), stack(lambda c, d: c.e_cell.weight_hh.t())
    bh_g, bh_p, bi_e, bh_e = (torch.stack([getattr(getattr(c, cell), n) for c in cells])[:, None]
                              for cell, n in (("g_cell", "bias_hh"), ("p_cell", "bias_hh"),
                                              ("e_cell", "bias_ih"), ("e_cell", "bias_hh")))
    w_att = torch.stack([c.attention.weight for c in cells])        # [K, 1, D_g]
    S = torch.stack([spk_f, spk_r] * len(models), 1)                # [T, K, B]
    onehot = F.one_hot(S, num_parties).bool()[..., None].unbind(0)  # T x [K, B, P, 1]
    sel = S[..., None, None].expand(T, K, B, 1, d_p).unbind(0)
    pe = sinusoid(T, d_g, mask.device)
    tr = first.training
    p, p_pe = first.drop.p, first.pe_drop.p
    q = G.new_zeros(K, B, num_parties, d_p)
    g, e = G.new_zeros(K, B, d_g), G.new_zeros(K, B, first.d_e)
    hist, out = [], []
    G, P = G.unbind(0), P.unbind(0)          # one backward for all steps (not one per G[t])
    n = B
    with bf16_autocast(mask.device, bf16):
        for t in range(T):
            if live[t] < n:                                         # dialogues that ended
                n = live[t]
                q, g, e = q[:, :n], g[:, :n], e[:, :n]
                hist = [h[:, :n] for h in hist]
            q_sel = q.gather(2, sel[t][:, :n]).squeeze(2)           # the speaker's state
            qq = torch.bmm(q_sel, w_q)
            g = dropout(_gru(G[t][:, :n] + qq[..., :3 * d_g], torch.baddbmm(bh_g, g, wh_g), g),
                        p, tr)                                      # Eq. (1)
            if t == 0:
                c = torch.zeros_like(g)
            else:                                                   # Eq. (2) over g_1..g_{t-1}
                mem = dropout(torch.stack(hist), p_pe, tr)          # [t, K, n, D_g]
                a = torch.softmax((mem * w_att).sum(-1), 0)
                c = (a[..., None] * mem).sum(0)
            q_new = dropout(_gru(torch.baddbmm(P[t][:, :n], c, wc_p), qq[..., 3 * d_g:] + bh_p,
                                 q_sel), p, tr)                     # Eq. (3)
            q = torch.where(onehot[t][:, :n], q_new[:, :, None], q)
            e = dropout(_gru(torch.baddbmm(bi_e, q_new, wi_e), torch.baddbmm(bh_e, e, wh_e), e),
                        p, tr)                                      # Eq. (4)
            hist.append(g + pe[t])
            out.append(F.pad(e, (0, 0, 0, B - n)))
    E = torch.stack(out, 1).float()                                 # [K, T, B, D_e], sorted
    E = E.index_select(2, torch.argsort(order))
    rev = reverse_index(lengths, T)
    return [(E[2 * i], E[2 * i + 1].gather(0, rev[..., None].expand_as(E[2 * i + 1])))
            for i in range(len(models))]
