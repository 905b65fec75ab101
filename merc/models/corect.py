"""CORECT: Relational Temporal GNN with auxiliary cross-modality interaction.

Nguyen et al., "Conversation Understanding using Relational Temporal Graph Neural Networks with
Auxiliary Cross-Modality Interaction", Findings of EMNLP 2023 (``papers/corect.md``).

What: every utterance gets one node per modality. Unimodal encoders (eqs. 1-2) plus a scaled speaker
embedding (eqs. 3-4) give the node features. The *local* context comes from RT-GCN: an RGCN over a
relational graph with per-modality past / future / self relations inside a window [P, F] and
cross-modal relations within an utterance (eqs. 5-7), followed by a multi-head Graph Transformer
(eqs. 8-10). The *global* context comes from P-CM: MulT-style cross-modal transformers for every
ordered modality pair over the whole dialogue (eqs. 11-13). Both are concatenated and classified by a
two-layer MLP (eqs. 14-17).

Why this structure: the paper's ablations (Table 5) remove RT-GCN, P-CM, R_multi and R_temp, the
window study (Fig. 4) varies [P, F], and the modality study (Tables 6, 8) uses every subset of
A/T/V, so each is a config switch here (``use_rtgcn``, ``use_pcm``, ``use_multi_relations``,
``use_temporal_relations``, ``use_speaker``, ``window_past``/``window_future``, the train key
``modalities``).

Choices where the paper is silent or ambiguous (each is also noted at the code):
* Window: ``window_semantics="paper"`` (node i receives from P past and F future utterances) or
  ``"reference"`` (the official code's edge set: wf-1 past and wp future). See ``merc.graphs``.
* Text encoder: a Transformer encoder on the sentence embeddings of the dialogue (no positional
  encoding, as in the official code; order enters through the graph), heads = first h in 7..14
  dividing the text dim (8 for 768) unless ``text_encoder_heads`` is set, then a linear map to
  ``hidden_size``. Unlike the official code it uses a key padding mask (padding and missing text are
  never attended to).
* FC encoders for audio / visual: Linear-ReLU-Linear-ReLU (eq. 2 says "FC network"; official shape).
* No activation between RGCN and the Graph Transformer (official), then BatchNorm + leaky ReLU.
* Self loops are kept when R_multi is dropped (eq. 5 lists them under R_multi, but the official code
  keeps them in both ablations and RGCN's root weight W_0 plays the same role anyway).
* P-CM: eq. 12 is implemented literally (residuals to the layer-normed inputs). For each target
  modality the outputs from all sources are concatenated and passed through a self-attention
  transformer (``self_att_layers`` layers, MulT's "memory" encoder, as in the official code); with
  three modalities this yields the same 6*hidden features as the paper's Z_{a<->v}, Z_{v<->l},
  Z_{l<->a}. Attention dropout in P-CM is ``pcm_dropout`` (official: 0).
* "w/o RT-GCN" keeps P-CM only; if P-CM is also absent (or one modality) the classifier reads the
  encoder outputs (as the official code does).
* Missing modalities (``batch.present``): features are zero; the nodes stay in the graph (the graph
  stays cached per lengths) but missing entries are never used as attention keys in the text encoder
  and P-CM (a dialogue whose whole modality is missing falls back to its real utterances).
* eta (speaker ratio) is not reported in the paper (only eta in [0, 1]); the official code adds the
  embedding unscaled, so the default is 1.0.

Computation (not a hyperparameter): ``kernels="fused"`` (default) evaluates the same modules without
padding and without per-edge tensors (``merc.models.corect_fused``; equal to ``kernels="modules"``,
the nn / PyG module path, to 1e-5 on logits and gradients); ``autocast_bf16`` trades numerics for
speed on CPUs with bf16 units and is off by default.
"""
from __future__ import annotations

from itertools import permutations
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from merc.configs.corect import CorectConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.graphs import corect_graph, num_relations
from merc.models.base import MercModel, Output, register_model
from merc.models.corect_fused import Bands, grouped_cross_modal, gt_banded, rgcn_banded
from merc.models.kernels import bf16_autocast, fused, linear
from merc.models.packed import Packing, encoder_packed


def _auto_heads(dim: int) -> int:
    """First h in 7..14 dividing ``dim`` (official choice; 8 for 768), else 1."""
    return next((h for h in range(7, 15) if dim % h == 0), 1)


def _key_mask(mask: torch.Tensor, present: Optional[torch.Tensor]) -> torch.Tensor:
    """Keys a query may attend to: real and observed; rows with none fall back to real ones."""
    if present is None:
        return mask
    keys = mask & present
    empty = ~keys.any(dim=1, keepdim=True)
    return torch.where(empty, mask, keys)


class CrossModalLayer(nn.Module):
    """One P-CM layer, eqs. (11)-(13); with ``kv`` = query it is a self-attention layer."""

    def __init__(self, dim: int, heads: int, dropout: float, cross: bool = True):
        super().__init__()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim) if cross else None
        self.ln_ff = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.ff2 = nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, z0: Optional[torch.Tensor], key_mask: torch.Tensor):
        q = self.ln_q(z)
        kv = q if self.ln_kv is None else self.ln_kv(z0)
        # Eq. (11): softmax(Q K^T / sqrt(d_k)) V with Q from the target, K, V from the source
        # modality (multi-head; nn.MultiheadAttention adds the usual output projection).
        cm, _ = self.attn(q, kv, kv, key_padding_mask=~key_mask, need_weights=False)
        # Eq. (12): Z̄ = CM(LN(Z_{i-1}), LN(Z_0)) + LN(Z_{i-1}) (residual to the normed input, as
        # printed in the paper; MulT's code adds the un-normed one).
        zbar = self.drop(cm) + q
        h = self.ln_ff(zbar)
        # Eq. (13): FFN(x) = max(0, x Ω1 + b1) Ω2 + b2;  Eq. (12): Z_i = FFN(LN(Z̄)) + LN(Z̄)
        return self.drop(self.ff2(self.drop(F.relu(self.ff1(h))))) + h


class PairwiseCrossModal(nn.Module):
    """P-CM (sec. 3.3): D cross-modal layers per ordered pair (source -> target), then per target
    a self-attention encoder over the concatenated pair outputs."""

    def __init__(self, modalities: tuple[str, ...], dim: int, cfg: CorectConfig):
        super().__init__()
        M = len(modalities)
        self.pairs = list(permutations(range(M), 2))      # (source, target)
        self.cross = nn.ModuleDict({
            f"{modalities[s]}_to_{modalities[t]}": nn.ModuleList(
                CrossModalLayer(dim, cfg.pcm_heads, cfg.pcm_dropout) for _ in range(cfg.pcm_layers))
            for s, t in self.pairs})
        mem_dim = (M - 1) * dim
        if mem_dim % cfg.self_att_heads:
            raise ValueError(f"CORECT: self_att_heads={cfg.self_att_heads} must divide "
                             f"(M-1)*hidden_size = {mem_dim}")
        self.mem = nn.ModuleList(
            nn.ModuleList(CrossModalLayer(mem_dim, cfg.self_att_heads, cfg.pcm_dropout, cross=False)
                          for _ in range(cfg.self_att_layers)) for _ in range(M))
        self.names = [f"{modalities[s]}_to_{modalities[t]}" for s, t in self.pairs]

    def forward(self, xs: list[torch.Tensor], key_masks: list[torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
        per_target: list[list[torch.Tensor]] = [[] for _ in xs]
        for (s, t), name in zip(self.pairs, self.names):
            z = xs[t]                                       # Z^{s->t}_[0] = Z^t_[0] = X^t
            for layer in self.cross[name]:                  # D layers, eq. (12)
                z = layer(z, xs[s], key_masks[s])
            per_target[t].append(z)                         # Z^{s->t}_[D]
        outs = []
        for t, zs in enumerate(per_target):
            z = torch.cat(zs, dim=-1)                       # concat over sources (official/MulT)
            for layer in self.mem[t]:
                z = layer(z, None, mask)
            outs.append(z)
        return torch.cat(outs, dim=-1)                      # [B, N, M(M-1)d]

    def forward_packed(self, xs: list[torch.Tensor], key_masks: list[torch.Tensor],
                       mask: torch.Tensor, pk: Packing) -> torch.Tensor:
        """:meth:`forward` on packed [U, d] inputs, all pairs' layer i (then all targets' memory
        layer i) as one grouped layer (``corect_fused.grouped_cross_modal``); [U, M(M-1)d]."""
        M = len(xs)
        z = torch.stack([xs[t] for _, t in self.pairs])                # Z^{s->t}_[0] = X^t
        z0 = torch.stack([xs[s] for s, _ in self.pairs])
        km = torch.stack([key_masks[s] for s, _ in self.pairs])
        for i in range(len(self.cross[self.names[0]])):                # D layers, eq. (12)
            z = grouped_cross_modal([self.cross[n][i] for n in self.names], z, z0, pk, km)
        zs = z.unbind(0)                        # not z[g]: a select's backward zero-fills all of z
        z = torch.stack([torch.cat([zs[g] for g, (_, t) in enumerate(self.pairs) if t == tt], -1)
                         for tt in range(M)])                          # concat over sources
        for i in range(len(self.mem[0])):
            z = grouped_cross_modal([self.mem[t][i] for t in range(M)], z, None, pk,
                                    mask.expand(M, *mask.shape))
        return torch.cat(list(z), dim=-1)


@register_model("corect", CorectConfig, paper="Nguyen et al., Findings of EMNLP 2023")
class Corect(MercModel):
    """CORECT (see the module docstring)."""

    config: CorectConfig

    def __init__(self, config: CorectConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        cfg, h = config, config.hidden_size
        self.modalities = tuple(meta.modalities)
        M = len(self.modalities)
        if M == 0:
            raise ValueError("CORECT needs at least one modality")
        # Eqs. (1)-(2): unimodal encoders
        self.encoders = nn.ModuleDict()
        for m in self.modalities:
            d = meta.dims[m]
            if m == "text":
                heads = cfg.text_encoder_heads or _auto_heads(d)
                if d % heads:
                    raise ValueError(f"CORECT: text_encoder_heads={heads} must divide the text "
                                     f"dim {d}")
                layer = nn.TransformerEncoderLayer(d, heads, cfg.text_encoder_ff, cfg.dropout,
                                                   batch_first=True)
                self.encoders[m] = nn.ModuleDict({
                    "transformer": nn.TransformerEncoder(layer, cfg.text_encoder_layers,
                                                         enable_nested_tensor=False),
                    "out": nn.Linear(d, h)})
            else:
                self.encoders[m] = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h),
                                                 nn.ReLU())
        # Eq. (3): speaker embedding
        self.speaker = nn.Embedding(max(meta.num_speakers, 1), h) if cfg.use_speaker else None
        feat = 0
        if cfg.use_rtgcn:
            if cfg.kernels == "fused":
                # PyG's parameter layout and initialisation without importing PyG (~3 CPU-s per
                # sweep trial process); the fused kernels read the parameters directly
                from merc.models.pyg_layout import RGCNParams as RGCNConv
                from merc.models.pyg_layout import TransformerConvParams as TransformerConv
            else:
                from torch_geometric.nn import RGCNConv, TransformerConv
            self.num_relations = num_relations(M, cfg.use_multi_relations,
                                               cfg.use_temporal_relations)
            # Eq. (7): RGCN, mean aggregation per relation + root weight W_0
            self.rgcn = RGCNConv(h, h, self.num_relations, aggr="mean", root_weight=True)
            # Eqs. (8)-(9): Graph Transformer with C heads, concatenated
            self.gt = TransformerConv(h, h, heads=cfg.gt_heads, concat=True, root_weight=True)
            self.gt_norm = nn.BatchNorm1d(h * cfg.gt_heads)
            feat += M * h * cfg.gt_heads
        self.pcm = None
        if cfg.use_pcm and M >= 2:
            if h % cfg.pcm_heads:
                raise ValueError(f"CORECT: pcm_heads={cfg.pcm_heads} must divide hidden_size={h}")
            self.pcm = PairwiseCrossModal(self.modalities, h, cfg)
            feat += M * (M - 1) * h
        if feat == 0:  # neither RT-GCN nor P-CM: classify the encoder outputs (official no_gnn)
            feat = M * h
        # Eqs. (15)-(16): classifier
        self.fc = nn.Linear(feat, h)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h, meta.num_classes)

    def _encode(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        mask = batch.mask
        xs, key_masks = [], []
        for k, m in enumerate(self.modalities):
            x = batch.features[m]
            present = batch.present[..., k] if batch.present is not None else None
            km = _key_mask(mask, present)
            key_masks.append(km)
            enc = self.encoders[m]
            if m == "text":
                # Eq. (1): x^l = Transformer(u^l) over the dialogue, padding/missing keys masked
                x = enc["out"](enc["transformer"](x, src_key_padding_mask=~km))
            else:
                x = enc(x)                                  # Eq. (2): x^τ = FC(u^τ), τ in {a, v}
            if self.speaker is not None:
                # Eq. (4): X_τ = η S_emb + X_τ, with S_emb from eq. (3)
                x = x + self.config.speaker_ratio * self.speaker(batch.speakers)
            xs.append(x)
        return xs, key_masks

    def _rtgcn(self, xs: list[torch.Tensor], batch: Batch) -> torch.Tensor:
        cfg = self.config
        M = len(xs)
        nodes = torch.cat([x[batch.mask] for x in xs], dim=0)   # modality-major: node = k*U + u
        g = corect_graph(batch.lengths, M, cfg.window_past, cfg.window_future,
                         cfg.window_semantics, cfg.use_multi_relations,
                         cfg.use_temporal_relations, nodes.device)  # Eqs. (5)-(6)
        x = self.rgcn(nodes, g.edge_index, g.edge_type)          # Eq. (7)
        x = self.gt(x, g.edge_index)                             # Eqs. (8)-(9), C heads concat
        x = self._norm_act(x)
        U = g.num_utterances
        return torch.cat([x[k * U:(k + 1) * U] for k in range(M)], dim=-1)  # Eq. (10): G^τ

    def _norm_act(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            # BatchNorm cannot estimate batch statistics from one node: use the running ones
            x = F.batch_norm(x, self.gt_norm.running_mean, self.gt_norm.running_var,
                             self.gt_norm.weight, self.gt_norm.bias, False, 0.0,
                             self.gt_norm.eps)
        else:
            x = self.gt_norm(x)
        return F.leaky_relu(x)

    def _forward_modules(self, batch: Batch) -> torch.Tensor:
        """``kernels="modules"``: nn / PyG modules on padded batches and the edge list."""
        mask = batch.mask
        xs, key_masks = self._encode(batch)
        parts = []
        if self.config.use_rtgcn:
            parts.append(self._rtgcn(xs, batch))                 # local context, [U, M*C*h]
        if self.pcm is not None:
            z = self.pcm(xs, key_masks, mask)                    # Eqs. (11)-(13), [B, N, M(M-1)h]
            parts.append(z[mask])
        if not parts:
            parts = [torch.cat([x[mask] for x in xs], dim=-1)]
        return torch.cat(parts, dim=-1)                          # Eq. (14): H = [G, Z]

    def _forward_fused(self, batch: Batch) -> torch.Tensor:
        """``kernels="fused"``: the same equations on packed utterances (``corect_fused``)."""
        cfg = self.config
        mask = batch.mask
        pk = Packing(mask)
        spk = None
        if self.speaker is not None:                             # Eqs. (3)-(4)
            spk = cfg.speaker_ratio * self.speaker(pk.unpad(batch.speakers))
        xs, key_masks = [], []
        for k, m in enumerate(self.modalities):
            present = batch.present[..., k] if batch.present is not None else None
            km = _key_mask(mask, present)
            key_masks.append(km)
            x = pk.unpad(batch.features[m])                      # [U, d_m]
            enc = self.encoders[m]
            if m == "text":                                      # Eq. (1)
                x = linear(encoder_packed(enc["transformer"], x, pk, km), enc["out"].weight,
                           enc["out"].bias)
            else:
                x = enc(x)                                       # Eq. (2)
            xs.append(x if spk is None else x + spk)
        parts = []
        if cfg.use_rtgcn:
            M, U = len(xs), pk.U
            bands = Bands(batch.lengths, pk.N, cfg.window_past, cfg.window_future,
                          cfg.window_semantics, cfg.use_temporal_relations)   # Eqs. (5)-(6)
            x = torch.stack(xs)                                  # [M, U, h]
            x = rgcn_banded(self.rgcn, x, pk, bands, cfg.use_multi_relations)       # Eq. (7)
            x = gt_banded(self.gt, x, pk, bands, cfg.use_multi_relations)    # Eqs. (8)-(9)
            x = self._norm_act(x.reshape(M * U, -1))
            parts.append(x.view(M, U, -1).transpose(0, 1).reshape(U, -1))   # Eq. (10)
        if self.pcm is not None:
            parts.append(self.pcm.forward_packed(xs, key_masks, mask, pk))  # Eqs. (11)-(13)
        if not parts:
            parts = xs
        return torch.cat(parts, dim=-1)                          # Eq. (14): H = [G, Z]

    def forward(self, batch: Batch) -> Output:
        cfg = self.config
        mask = batch.mask
        with bf16_autocast(mask.device, cfg.autocast_bf16):
            if fused(cfg.kernels):
                hcat = self._forward_fused(batch)
            else:
                hcat = self._forward_modules(batch)
            v = self.drop(F.relu(self.fc(hcat)))                 # Eq. (15): ReLU(Φ0 h + b0)
            flat = self.out(v).float()                           # Eq. (16) logits; softmax in loss
        B, N = mask.shape
        logits = flat.new_zeros(B, N, flat.shape[-1])
        logits[mask] = flat                                      # Eq. (17): argmax by the caller
        return Output(logits=logits)
