"""Mi-CGA: Cross-modal Graph Attention Network for incomplete modalities.

Nguyen, Kieu, Ha, Phan, Le, "Mi-CGA: Cross-modal Graph Attention Network for robust emotion
recognition in the presence of incomplete modalities", Neurocomputing 623 (2025) 129342
(``papers/micga.md``). No public code (reference_impls.md §3a): derived from the paper.

What (Algorithm 1):
1. IMR: unimodal encoders (eqs. 1-6: Linear for audio / visual, a BiLSTM for text), the GCNet
   missing mask (eq. 7: the train keys ``missing_rate`` / ``missing_redraw``; the batch says which
   entry is missing in ``batch.present`` and carries the ground truth in ``batch.unmasked``) and
   a speaker embedding concatenated with ratio eta (eqs. 8-9).
2. CGA-Net on a fully connected graph per dialogue (sec. 3.3): FE = a GCN encoder f and a linear
   decoder g (eq. 10) smoothed with the input by lambda (eqs. 11-12); MulGAT = stacked multi-head
   S-GAT layers with GATv2 scoring (eqs. 13-18, PyG ``GATv2Conv``); CMA = bidirectional scaled
   dot-product attention for every modality pair (eqs. 19-24).
3. Classifier on [X_GAT, X_Cross] (eqs. 25-26); loss L_cls + L_rec (eqs. 27-30), L_rec returned as
   ``Output.aux_loss`` (MSE eq. 29, KL with sparsity p eq. 30, or none).

Choices where the paper is silent or ambiguous (config keys in brackets):
* Latent sizes: d_a = d_v = ``hidden_size`` (100, CORECT's, the authors' other code); eq. 3
  concatenates both LSTM directions, so d_t = 2 * hidden_size. The BiLSTM has ``lstm_layers`` = 2
  (GCNet's base model, whose protocol the paper follows).
* Eq. 7 masks the *encoded* features: encoders run on the zero-filled inputs, then X ⊙ M.
* S-Emb (eq. 8) is a learned embedding of width |S| (the number of speakers) scaled by eta
  (``speaker_ratio``, the paper gives only eta in [0, 1]; 1.0 as in CORECT) [``use_speaker``].
* FE encoder f: ``fe_layers`` GCNConv layers (footnote: GCN, "GGCN" read as GCN) with
  A~ = D^-1/2 (A + I) D^-1/2, ReLU after each, width ``fe_hidden_size``; decoder g linear (eq. 10).
* Where eq. 12 applies [``fe_blend``]: ``all`` (default) reads eqs. 10 and 12 literally, X^coarse =
  g(f(.)) at every entry, so observed features are smoothed with their reconstruction too;
  ``missing`` follows the sentence "the missing positions ... are populated with values from the
  reconstructed matrix": observed entries keep X_spk^miss and only missing ones become
  (1-lambda) X^coarse. Under ``missing`` lambda only rescales the linear decoder's output, which g
  can absorb; under ``all`` lambda is a real trade-off (and f, g learn at rho = 0 too).
* Which side lambda weights [``smoothing_on``]: ``input`` (eq. 12: (1-lambda) X^coarse + lambda
  X_spk^miss) or ``coarse`` (sec. 5.5.1's prose: "larger values ... more influence from the coarse
  estimated features"). ``smoothing: none`` ("w/o smooth", Table 6) is X^FE = X^coarse.
* S-GAT (eqs. 14-17): eqs. 14-16 are one ``GATv2Conv`` head (PyG's GATv2 shares the source
  projection between the score and the message, so W_agg is that projection); eq. 17 propagates
  again with the same alpha and a per-head W_com, then LeakyReLU. Self loops are added (PyG
  default). Eq. 18's Psi maps the H concatenated heads back to d-bar so layers stack.
* CMA: single-head attention, d_Q = d_K = d_V = ``cma_dim``, separate W_Q, W_K, W_V per direction,
  padding masked; every unordered modality pair (eq. 23 lists the three of A, T, V).
* "w/o MulGAT" (CGA_G, ``use_mulgat=false``) classifies [X^FE, X_Cross]; "w/o CMA" (CGA_C,
  ``use_cma=false``) classifies X_GAT.
* Eq. 26: a ReLU layer of width ``hidden_size``, dropout ``dropout`` (0.5, the authors' CORECT),
  then the output layer (its "argmin" is read as argmax).
* L_rec only over the missing entries, normalised as GCNet's MaskedReconLoss: per modality the sum
  over its missing entries divided by its width (eq. 29's 1/||X||), summed over modalities and
  divided by the number of real utterances. The MSE target is the encoders' output on the
  unmasked features, detached [``rec_detach_target``] so the encoders cannot shrink it to zero.
  KL (eq. 30) is per entry with p-hat = sigmoid(X^FE) and the same normalisation (a sum over 2560
  raw-sized entries would dwarf L_cls). Eq. 27 adds L_rec unweighted [``rec_weight``]. L_rec is
  computed in training only (evaluation reads the logits).
* Missing mask: fixed per split and seed (Algorithm 1 draws it once, before the epochs; GCNet
  redraws per batch: ``missing_redraw=true``).
* IEMOCAP-4 is GCNet's merged definition (hap+exc, ``iemocap4-merged``); the paper's 4-way numbers
  are only comparable on data imported that way.
"""
from __future__ import annotations

import math
from functools import lru_cache
from itertools import combinations
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from merc.configs.micga import MicgaConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.graphs import fully_connected_edges
from merc.models.backbones._common import SequenceEncoder
from merc.models.base import MercModel, Output, register_model


@lru_cache(maxsize=256)
def _full_graph(lengths: tuple[int, ...], device: str) -> torch.Tensor:
    """Sec. 3.3: every utterance connected to every other of its dialogue (self loops are added
    by the convolutions: A + I in eq. 10, GATv2's default)."""
    return fully_connected_edges(lengths, self_loops=False).to(device)


class SGATLayer(nn.Module):
    """One MulGAT layer: H S-GAT heads (eqs. 13-17) concatenated and mixed by Psi (eq. 18)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dim = heads, dim
        from torch_geometric.nn import GATv2Conv   # at build time: see Micga.__init__
        # Eqs. (14)-(16): x_agg,i = sum_j alpha_ij W_agg x_j, alpha from GATv2 scores
        self.gat = GATv2Conv(dim, dim, heads=heads, concat=True)
        self.w_com = nn.Parameter(torch.empty(heads, dim, dim))      # W_com per head, eq. (17)
        for w in self.w_com:                  # per head: a 3-D xavier would use fan d * d
            nn.init.xavier_uniform_(w)
        self.psi = nn.Linear(heads * dim, dim)                        # Psi, eq. (18)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        agg, (ei, alpha) = self.gat(x, edge_index, return_attention_weights=True)
        U, H, d = x.shape[0], self.heads, self.dim
        y = torch.einsum("uhd,hde->hue", agg.view(U, H, d), self.w_com).reshape(H * U, d)
        # Eq. (17) with the same alpha: one sparse [HU, HU] block-diagonal (per head) propagation,
        # ~7x faster on CPU than gathering an [E, H, d] message tensor
        off = (torch.arange(H, device=x.device) * U)[:, None]
        idx = torch.stack([(ei[1][None, :] + off).reshape(-1), (ei[0][None, :] + off).reshape(-1)])
        A = torch.sparse_coo_tensor(idx, alpha.t().reshape(-1), (H * U, H * U),
                                    check_invariants=False)
        com = F.leaky_relu(torch.sparse.mm(A, y)).view(H, U, d)
        return self.psi(com.transpose(0, 1).reshape(U, H * d))       # Eq. (18): Psi [X_1..X_H]


class CrossModalAttention(nn.Module):
    """CMA_{delta -> gamma} (eqs. 19-21): queries from gamma, keys and values from delta."""

    def __init__(self, d_delta: int, d_gamma: int, dim: int):
        super().__init__()
        self.q = nn.Linear(d_gamma, dim, bias=False)    # W_Q^gamma
        self.k = nn.Linear(d_delta, dim, bias=False)    # W_K^delta
        self.v = nn.Linear(d_delta, dim, bias=False)    # W_V^delta
        self.scale = dim ** -0.5

    def forward(self, x_delta: torch.Tensor, x_gamma: torch.Tensor, mask: torch.Tensor):
        # Eq. (21): softmax(X^g W_Q (X^d W_K)^T / sqrt(d_k)) X^d W_V over one dialogue
        scores = torch.einsum("bid,bjd->bij", self.q(x_gamma), self.k(x_delta)) * self.scale
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.softmax(scores, dim=-1) @ self.v(x_delta)      # H^gamma [B, N, d_V]


@register_model("micga", MicgaConfig, paper="Nguyen et al., Neurocomputing 2025")
class Micga(MercModel):
    """Mi-CGA (see the module docstring)."""

    config: MicgaConfig

    def __init__(self, config: MicgaConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        cfg, h = config, config.hidden_size
        self.modalities = tuple(meta.modalities)
        if not self.modalities:
            raise ValueError("Mi-CGA needs at least one modality")
        self.encoders = nn.ModuleDict()
        self.widths: list[int] = []
        for m in self.modalities:
            if m == "text":   # Eq. (3): BiLSTM over the dialogue, both directions concatenated
                self.encoders[m] = SequenceEncoder("lstm", meta.dims[m], h, cfg.dropout,
                                                   layers=cfg.lstm_layers)
                self.widths.append(2 * h)
            else:             # Eqs. (1)-(2): x = W_e u + b
                self.encoders[m] = nn.Linear(meta.dims[m], h)
                self.widths.append(h)
        d = sum(self.widths)
        self.offsets = [sum(self.widths[:k]) for k in range(len(self.widths) + 1)]
        S = max(meta.num_speakers, 1)
        self.speaker = nn.Embedding(S, S) if cfg.use_speaker else None       # Eq. (8)
        dbar = d + (S if cfg.use_speaker else 0)
        self.d, self.dbar = d, dbar
        # Eq. (10): encoder f (GCN on A~) and linear decoder g
        dims = [dbar] + [cfg.fe_hidden_size] * cfg.fe_layers
        # PyG is imported when a model is built, not with the module: a sweep's driver validates
        # configs without it (importing torch_geometric costs ~3.5 s of the sweep's start)
        from torch_geometric.nn import GCNConv
        self.fe_enc = nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.fe_dec = nn.Linear(cfg.fe_hidden_size, dbar)
        self.mulgat = (nn.ModuleList(SGATLayer(dbar, cfg.gat_heads) for _ in range(cfg.gat_layers))
                       if cfg.use_mulgat else None)
        self.pairs = list(combinations(range(len(self.modalities)), 2)) if cfg.use_cma else []
        self.cma = nn.ModuleDict()
        for a, b in self.pairs:
            na, nb = self.modalities[a], self.modalities[b]
            wa, wb = self.widths[a], self.widths[b]
            self.cma[f"{na}_to_{nb}"] = CrossModalAttention(wa, wb, cfg.cma_dim)
            self.cma[f"{nb}_to_{na}"] = CrossModalAttention(wb, wa, cfg.cma_dim)
        feat = dbar + 2 * len(self.pairs) * cfg.cma_dim                      # Eq. (25)
        self.fc = nn.Linear(feat, h)                                         # Eq. (26): W_l
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, meta.num_classes)                            # Eq. (26): W_s

    # ---- IMR --------------------------------------------------------------------------------
    def encode(self, features: dict[str, torch.Tensor], batch: Batch,
               present: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Eqs. (1)-(6): X = [X^(a), X^(t), X^(v)], padded [B, N, d]. With ``present`` the inputs
        of missing entries are zeroed first, so that no missing value reaches the BiLSTM's context
        even if a batch carried one (the data layer zeroes them already)."""
        xs = []
        for k, m in enumerate(self.modalities):
            enc = self.encoders[m]
            x = features[m]
            if present is not None:
                x = x * present[..., k:k + 1].to(x.dtype)
            xs.append(enc(x, batch.mask, batch.lengths) if m == "text" else enc(x))
        return torch.cat(xs, dim=-1)

    def entry_mask(self, batch: Batch) -> torch.Tensor:
        """M of eq. 7 per column of X: [B, N, d] (1 = observed)."""
        present = batch.present.to(torch.float32)
        w = torch.tensor(self.widths, device=present.device)
        return torch.repeat_interleave(present, w, dim=-1)

    def smooth(self, coarse: torch.Tensor, x_in: torch.Tensor) -> torch.Tensor:
        """Eqs. (11)-(12): X^FE = (1 - lambda) X^coarse + lambda X_spk^miss (or as configured)."""
        lam = self.config.smoothing
        if lam == "none":
            return coarse
        lam = float(lam)
        if self.config.smoothing_on == "coarse":
            lam = 1.0 - lam
        return (1.0 - lam) * coarse + lam * x_in

    # ---- CGA-Net ------------------------------------------------------------------------------
    def feature_estimation(self, batch: Batch):
        """IMR + FE: (X_spk^miss, X^FE, observed-entry mask, edge_index), node rows [U, d-bar]
        in flat batch order."""
        cfg, mask = self.config, batch.mask
        x = self.encode(batch.features, batch, batch.present)
        m_col = self.entry_mask(batch)
        x_miss = x * m_col                                                   # Eq. (7)
        if self.speaker is not None:
            s_emb = cfg.speaker_ratio * self.speaker(batch.speakers)         # Eqs. (8)-(9)
            x_spk = torch.cat([x_miss, s_emb], dim=-1)
            m_col = torch.cat([m_col, torch.ones_like(s_emb)], dim=-1)
        else:
            x_spk = x_miss
        nodes = x_spk[mask]                                                  # [U, d-bar]
        edge_index = _full_graph(tuple(batch.lengths.tolist()), str(nodes.device))
        z = nodes
        for conv in self.fe_enc:
            z = F.relu(conv(z, edge_index))                                  # f_phi on A~
        coarse = self.fe_dec(z)                                              # Eq. (10): g_theta
        if cfg.fe_blend == "missing":     # observed entries keep their values
            coarse = torch.where(m_col[mask] > 0, nodes, coarse)
        x_fe = self.smooth(coarse, nodes)                                    # Eqs. (11)-(12)
        return nodes, x_fe, m_col[mask] > 0, edge_index

    def forward(self, batch: Batch) -> Output:
        cfg, mask = self.config, batch.mask
        B, N = mask.shape
        _, x_fe, _, edge_index = self.feature_estimation(batch)
        if self.mulgat is not None:
            g = x_fe
            for layer in self.mulgat:                                        # Eqs. (13)-(18)
                g = layer(g, edge_index)
        else:
            g = x_fe                                                         # CGA_G
        parts = [g]
        if self.pairs:
            fe_pad = x_fe.new_zeros(B, N, self.dbar)
            fe_pad[mask] = x_fe
            offs = self.offsets
            xm = [fe_pad[..., offs[k]:offs[k + 1]] for k in range(len(self.widths))]
            for a, b in self.pairs:                                          # Eqs. (22)-(24)
                na, nb = self.modalities[a], self.modalities[b]
                parts.append(self.cma[f"{na}_to_{nb}"](xm[a], xm[b], mask)[mask])   # H^b
                parts.append(self.cma[f"{nb}_to_{na}"](xm[b], xm[a], mask)[mask])   # H^a
        final = torch.cat(parts, dim=-1)                                     # Eq. (25)
        flat = self.out(self.drop(F.relu(self.fc(final))))                   # Eq. (26)
        logits = flat.new_zeros(B, N, flat.shape[-1])
        logits[mask] = flat
        out = Output(logits=logits)
        if self.training and cfg.rec_loss != "none":
            rec = self.reconstruction_loss(x_fe[:, :self.d], batch)
            if rec is not None:
                out.aux_loss = cfg.rec_weight * rec                          # Eq. (27)
                out.extras["rec_loss"] = rec.detach()
        return out

    def reconstruction_loss(self, x_fe: torch.Tensor, batch: Batch) -> Optional[torch.Tensor]:
        """L_rec over the missing entries (eqs. 29-30), GCNet's normalisation; ``x_fe`` is the
        feature part of X^FE of the real utterances [U, d]. None when nothing is missing."""
        cfg, mask = self.config, batch.mask
        missing = ~batch.present[mask]                                       # [U, M]
        if not bool(missing.any()):
            return None
        if cfg.rec_loss == "mse":
            if batch.unmasked is None:
                raise ValueError("Mi-CGA rec_loss=mse needs batch.unmasked (the features before "
                                 "the missing mask); the batch has missing entries but none")
            with torch.set_grad_enabled(torch.is_grad_enabled() and not cfg.rec_detach_target):
                target = self.encode(batch.unmasked, batch)[mask]
            if cfg.rec_detach_target:
                target = target.detach()
            per_entry = (x_fe - target) ** 2                                 # Eq. (29)
        else:
            p = cfg.kl_sparsity                                              # Eq. (30), p-hat =
            per_entry = (p * math.log(p) + (1 - p) * math.log(1 - p)         # sigmoid(X^FE)
                         - p * F.logsigmoid(x_fe) - (1 - p) * F.logsigmoid(-x_fe))
        total = x_fe.new_zeros(())
        for k, w in enumerate(self.widths):     # GCNet: per modality / its width, / utterances
            miss = missing[:, k].to(per_entry.dtype)
            cols = per_entry[:, self.offsets[k]:self.offsets[k + 1]]
            total = total + (cols.sum(-1) * miss).sum() / w
        return total / mask.sum().clamp(min=1)
