"""Ada2I: adaptive feature weighting (AFW) + adaptive modality weighting (AMW).

Nguyen et al., "Ada2I: Enhancing Modality Balance for Multimodal Conversational Emotion
Recognition", ACM MM 2024 (``papers/ada2i.md``); released code leson502/ADA2I@24b9956. The training
optimisation of sec. 3.5 (discrepancy ratio, eqs. 16-19) is the strategy ``ada2i``
(:mod:`merc.strategies.ada2i`), which this model selects by default (``strategy=none`` trains the
network alone).

What, at the defaults (= the released network: same modules, same per-module parameter counts,
pinned by ``tests/test_ada2i.py``):

* Eq. (2) encoder, per modality: ``nn.TransformerEncoder`` on the raw features (2 layers, heads =
  first h in 5..14 dividing the dim, feed-forward 2048, dropout 0.5, no positional encoding), then
  a Linear to ``hidden_size``.
* AFW, ``afw_layers`` stacked layers (released ``mmt_nlayers=2``), each: Eq. (5) core tensors
  G^m = (Z W1) (x)_1 (Z W2) (per-utterance outer product = mode-1 Khatri-Rao) for query and key;
  Eq. (4) Theta^m = G_Q^m * G_K^m; the pooled A^(m) = mean of Theta^m over the dialogue's
  utterances; Eq. (6) Theta^m contracted with A^(l) of every other modality l (tensor-ring
  contraction, :func:`tensor_ring_contract`), flattened r*r -> Linear -> Att_m; Eq. (7)
  Z^f = Att_m * Z + beta Z, dropout. Eqs. (11)-(12): an Attention Mapping Network Phi_m (one Linear
  per modality) and the L1 loss ``|Phi_m(Z_m) - target|`` summed over the layers, added to the loss
  unweighted (``Output.aux_loss``, training only, as released).
* AMW, Eq. (8): per-modality logits ``normalize(Z^f_m) . normalize(W_m) + b / M`` with W_m the
  modality's slice of one Linear(M * hidden, C), summed over modalities (``Output.logits``); the
  per-modality terms are ``Output.modality_logits``. Without AMW (``use_amw=false``, released
  without ``--mmcosine``) the joint logit is that Linear on the concatenation, and the
  per-modality terms are its slices ``Z_m W_m^T + b / M`` (they sum to it exactly).
* ``Output.extras["linear_logits_<modality>"]``: ``Z_m W_m^T + b / M`` without gradient, the
  unimodal logits the released code scores for the discrepancy ratio (eq. 16) whatever AMW does.
* :meth:`Ada2I.modality_parameters`: the encoder parameters theta^(m) that eq. (18) modulates.

Choices where the paper and the released code differ or the paper is silent (released unless a key
says otherwise):

* Eq. (4) prints softmax(G_Q * G_K / sqrt(d_k)); the code has the bare product
  (``afw_score="product"``). ``"softmax"`` is the printed form, softmax over the r*r entries of an
  utterance's core with d_k = r*r (the paper does not define d_k).
* A^(m) is "averaged across the modality dimension d_m" in the paper; the code's core has no d_m
  axis and averages over the dialogue's utterances, as here. Unlike the code, the mean skips
  padding (and missing entries), so a dialogue's output does not depend on its batch-mates.
* The encoders use a key padding mask (the code has none); missing entries (``batch.present``) are
  zero inputs, never attention keys (a dialogue whose whole modality is missing falls back to its
  real utterances).
* Eq. (12) aligns Phi_m(Z_m) with Att_m; in the code a list alias makes the target the layer's
  output Att_m * Z + beta Z (``afw_map_target="output"``); ``"attention"`` is the printed Att_m.
  The L1 mean runs over real utterances (the code's includes padding).
* Eq. (8)'s ||W^m||: the code normalises W_m^T along dim 1, i.e. each hidden unit's row across the
  classes (``amw_weight_norm="feature"``); ``"class"`` normalises each class vector (MMCosine /
  NormFace, the paper's refs. [35, 40]). No scale factor, as released.
* Eq. (9)'s MLP on Z^{m-adapt} is not in the released code: the summed AMW logits are the output.
  Eq. (13)'s L_modal and eq. (10)'s L_cls are then the same cross-entropy, computed once.
* Speaker identity is unused and there is no graph (released).
* Table 2 vs the released ``run.sh``: beta 0.01 vs 0.012 (IEMOCAP), lr 1.2e-4 vs 1.3e-4 and
  eta 0.4 vs alpha 0.42 (MELD); the defaults follow Table 2. The released ReduceLROnPlateau uses
  torch's factor 0.1 / patience 10; ``scheduler=plateau`` here is the loop's (0.5 / 5).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from merc.configs.ada2i import Ada2IConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.base import MercModel, Output, register_model


def auto_heads(dim: int) -> int:
    """The released encoder's head count: first h in 5..14 dividing ``dim``, else 1."""
    return next((h for h in range(5, 15) if dim % h == 0), 1)


def khatri_rao(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mode-1 Khatri-Rao product of Eq. (5): per utterance the outer product [.., r] x [.., r]."""
    return u.unsqueeze(-1) * v.unsqueeze(-2)


def tensor_ring_contract(cores: list[torch.Tensor], pooled: list[torch.Tensor]
                         ) -> list[torch.Tensor]:
    """Eq. (6) contraction: for modality j, Theta^j [B, N, r, r] times A^(l) [B, r, r] for every
    other modality l, in modality order (the mode-(3,1) contractions; released order)."""
    out = []
    for j, core in enumerate(cores):
        a = core
        for l, pool in enumerate(pooled):
            if l != j:
                a = torch.matmul(a, pool.unsqueeze(1))       # sum_k a[b,n,i,k] A[b,k,o]
        out.append(a)
    return out


def masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, N, ...] over the utterances with ``keep`` [B, N] (at least one per row)."""
    w = keep.to(x.dtype).view(*keep.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class AFWLayer(nn.Module):
    """One adaptive feature weighting layer, Eqs. (4)-(7) and (11)-(12)."""

    def __init__(self, num_modalities: int, hidden: int, cfg: Ada2IConfig):
        super().__init__()
        M, r = num_modalities, cfg.tensor_rank

        def maps(out: int, inp: int = hidden) -> nn.ModuleList:
            return nn.ModuleList(nn.Linear(inp, out) for _ in range(M))

        # Eq. (5): W_Q^(1), W_Q^(2), W_K^(1), W_K^(2) of every modality
        self.q1, self.q2, self.k1, self.k2 = maps(r), maps(r), maps(r), maps(r)
        self.lin_att = maps(hidden, r * r)                   # Eq. (6) Linear
        self.mapping = maps(hidden)                          # Eq. (11) Phi_m
        self.drop = nn.Dropout(cfg.dropout)
        self.beta = cfg.afw_beta
        self.score = cfg.afw_score
        self.map_target = cfg.afw_map_target

    def forward(self, zs: list[torch.Tensor], keep: torch.Tensor, mask: torch.Tensor
                ) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        cores, pooled = [], []
        for j, z in enumerate(zs):
            g_q = khatri_rao(self.q1[j](z), self.q2[j](z))   # Eq. (5) G_Q^m [B, N, r, r]
            g_k = khatri_rao(self.k1[j](z), self.k2[j](z))   # Eq. (5) G_K^m
            theta = g_q * g_k                                # Eq. (4), released: no softmax
            if self.score == "softmax":                      # Eq. (4) as printed, d_k = r * r
                r2 = theta.shape[-1] * theta.shape[-2]
                theta = torch.softmax(theta.flatten(-2) / r2 ** 0.5, -1).view_as(theta)
            cores.append(theta)
            pooled.append(masked_mean(theta, keep[..., j]))  # A^(m) [B, r, r]
        contracted = tensor_ring_contract(cores, pooled)     # Eq. (6) contraction
        outs, att = [], []
        for j, z in enumerate(zs):
            a = self.lin_att[j](contracted[j].flatten(-2))   # Eq. (6) Att_m [B, N, hidden]
            att.append(a)
            outs.append(a * z + self.beta * z)               # Eq. (7)
        loss = None
        if self.training:                                    # Eqs. (11)-(12), L1 over real rows
            target = outs if self.map_target == "output" else att
            w = mask.to(zs[0].dtype)[..., None]
            diff = sum(((self.mapping[j](z) - t).abs() * w).sum() for j, (z, t) in
                       enumerate(zip(zs, target)))
            loss = diff / (w.sum().clamp(min=1.0) * zs[0].shape[-1] * len(zs))
        return [self.drop(o) for o in outs], loss


@register_model("ada2i", Ada2IConfig, paper="Nguyen et al., ACM MM 2024")
class Ada2I(MercModel):
    """Ada2I (see the module docstring)."""

    config: Ada2IConfig

    def __init__(self, config: Ada2IConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        cfg, h = config, config.hidden_size
        self.modalities = tuple(meta.modalities)
        M = len(self.modalities)
        if M == 0:
            raise ValueError("Ada2I needs at least one modality")
        self.encoders = nn.ModuleDict()                      # Eq. (2): phi(theta^(m), X^m)
        for m in self.modalities:
            d = meta.dims[m]
            heads = cfg.encoder_heads or auto_heads(d)
            if d % heads:
                raise ValueError(f"Ada2I: encoder_heads={heads} must divide the {m} dim {d}")
            layer = nn.TransformerEncoderLayer(d, heads, cfg.encoder_ff, cfg.dropout,
                                               batch_first=True)
            self.encoders[m] = nn.ModuleDict({
                "transformer": nn.TransformerEncoder(layer, cfg.encoder_layers,
                                                     enable_nested_tensor=False),
                "out": nn.Linear(d, h)})
        self.afw = (nn.ModuleList(AFWLayer(M, h, cfg) for _ in range(cfg.afw_layers))
                    if cfg.use_afw else None)
        self.fc = nn.Linear(M * h, meta.num_classes)         # W^m = slices, b (Eq. 8)

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """theta^(m) of Eqs. (15)/(18): the encoder parameters of each modality."""
        return {m: list(self.encoders[m].parameters()) for m in self.modalities}

    def _keys(self, batch: Batch) -> torch.Tensor:
        """[B, N, M] real and observed entries; a dialogue without any falls back to ``mask``."""
        keep = batch.mask[..., None] & batch.present
        empty = ~keep.any(dim=1, keepdim=True)
        return torch.where(empty, batch.mask[..., None].expand_as(keep), keep)

    def forward(self, batch: Batch) -> Output:
        cfg, mask = self.config, batch.mask
        keep = self._keys(batch)
        zs = []
        for j, m in enumerate(self.modalities):             # Eq. (2)
            enc = self.encoders[m]
            x = enc["transformer"](batch.features[m], src_key_padding_mask=~keep[..., j])
            zs.append(enc["out"](x))
        aux = None
        if self.afw is not None:                            # Eqs. (3)-(7), (11)-(12)
            for layer in self.afw:
                zs, loss = layer(zs, keep, mask)
                if loss is not None:
                    aux = loss if aux is None else aux + loss
        M, h = len(zs), cfg.hidden_size
        W, b = self.fc.weight, self.fc.bias
        mod_logits, linear = {}, {}
        for j, (m, z) in enumerate(zip(self.modalities, zs)):
            Wm = W[:, j * h:(j + 1) * h]                     # [C, h]
            with torch.no_grad():                           # scored by eq. (16), released form
                linear[f"linear_logits_{m}"] = z @ Wm.T + b / M
            if cfg.use_amw:                                 # Eq. (8), one modality's term
                Wn = (F.normalize(Wm.T, dim=1) if cfg.amw_weight_norm == "feature"
                      else F.normalize(Wm, dim=1).T)
                mod_logits[m] = F.normalize(z, dim=-1) @ Wn + b / M
            else:                                           # concat + Linear, split by modality
                mod_logits[m] = z @ Wm.T + b / M
        logits = torch.stack(list(mod_logits.values())).sum(0)   # Eq. (8) sum over m
        return Output(logits=logits, modality_logits=mod_logits, aux_loss=aux, extras=linear)
