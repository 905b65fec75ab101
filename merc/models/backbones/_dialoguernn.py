"""The released SPCL copy's BiDDIN branch (``BiModel_single``): a bidirectional DialogueRNN with
self-attention, one per modality. The equations are in :mod:`merc.models.backbones.biddin`.

DialogueRNN: Majumder et al., "DialogueRNN: An Attentive RNN for Emotion Detection in
Conversations", AAAI 2019 (Eqs. (1)-(4): global state, context attention, party state, emotion
state), the cell BiDDIN (Zhang et al., ACM MM 2020) and the SPCL copy build on. The cells step
through the utterances one at a time (that is the model) but all dialogues of a batch step together.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from merc.models.backbones._common import _heads_for


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
        B, T, _ = x.shape
        u, spk = x.transpose(0, 1), speakers.transpose(0, 1)         # time-major
        ef = self.drop(self.rnn_f(u, spk, num_parties))
        rev = reverse_index(lengths, T)
        u_r = u.gather(0, rev[..., None].expand_as(u))
        er = self.rnn_r(u_r, spk.gather(0, rev), num_parties)
        er = self.drop(er.gather(0, rev[..., None].expand_as(er)))
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
