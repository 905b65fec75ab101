"""BiDDIN as an SPCL late-fusion backbone.

Zhang et al., "Modeling both Intra- and Inter-modal Influence for Real-Time Emotion Detection in
Conversations", ACM MM 2020 (SPCL ref. [60]); used by SPCL (Nguyen et al., NCAA 2026, sec. 4.2,
``papers/spcl.md``) as the emotion prediction network phi_m of SPCL Eq. (1), the uni-modal logits
summed into the joint logit (SPCL Eq. (2)).

What, per modality m:
1. *intra-modal* influence: a bidirectional GRU over the dialogue on modality m alone,
   c^m_i = BiGRU_m(x^m)_i (SPCL sec. 4.2: "a bidirectional GRU for modality-specific encoding");
2. *inter-modal* influence: similarity-based attention from c^m_i over the contexts of every
   *other* modality m' across the dialogue, e^m_i = sum_{m' != m, j} softmax(c^m_i^T W c^{m'}_j)
   c^{m'}_j (BiDDIN's cross-modal interaction; SPCL: "edge weights set by similarity-based
   attention");
3. a gate that mixes the two streams, g = sigma(W_g [c^m_i ; e^m_i]),
   h^m_i = g * c^m_i + (1 - g) * e^m_i;
4. classifier Linear-ReLU-dropout-Linear -> z^m.

Choices:
* The released BiDDIN (and the SPCL copy, a DialogueRNN-style ``BiModel`` per modality) updates
  party / global GRU cells one utterance at a time. We keep the two influences and the
  bidirectional GRU encoders but compute them for the whole batch at once (packed GRUs and masked
  attention), which is what makes CPU training practical; the step-wise party state of
  DialogueRNN is not reproduced.
* With a single modality there is no inter-modal stream: h^m = c^m and the attention / gate modules
  are not built.
* ``causal_attention=True`` restricts step 2 to j <= i (BiDDIN's "real-time" setting); the default
  False matches the SPCL usage (whole dialogues, bidirectional).
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from merc.config import ModelConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.backbones._common import SequenceEncoder, late_fusion_output
from merc.models.backbones.dialoguegcn import SPCL_IEMOCAP, SPCL_MELD
from merc.models.base import MercModel, Output, register_model


class BiDDINConfig(ModelConfig):
    """BiDDIN hyperparameters (late fusion per SPCL)."""

    hidden_size: int = Field(200, ge=2)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    encoder_layers: int = Field(1, ge=1)
    causal_attention: bool = False

    PAPER_DEFAULTS = {"iemocap6": SPCL_IEMOCAP, "iemocap4": SPCL_IEMOCAP, "meld": SPCL_MELD}


@register_model("biddin", BiDDINConfig,
                paper="Zhang et al., ACM MM 2020 (as an SPCL late-fusion backbone)")
class BiDDIN(MercModel):
    """Late-fusion BiDDIN (see the module docstring)."""

    config: BiDDINConfig

    def __init__(self, config: BiDDINConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        cfg = config
        self.modalities = tuple(meta.modalities)
        if not self.modalities:
            raise ValueError("BiDDIN needs at least one modality")
        h = 2 * (cfg.hidden_size // 2)
        self.intra = nn.ModuleDict({m: SequenceEncoder("gru", meta.dims[m], cfg.hidden_size // 2,
                                                       cfg.dropout, cfg.encoder_layers)
                                    for m in self.modalities})
        multi = len(self.modalities) > 1
        self.sim = nn.ModuleDict({m: nn.Linear(h, h, bias=False) for m in self.modalities}) \
            if multi else None
        self.gate = nn.ModuleDict({m: nn.Linear(2 * h, h) for m in self.modalities}) \
            if multi else None
        self.fc = nn.ModuleDict({m: nn.Linear(h, h) for m in self.modalities})
        self.out = nn.ModuleDict({m: nn.Linear(h, meta.num_classes) for m in self.modalities})
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, batch: Batch) -> Output:
        mask = batch.mask
        B, N = mask.shape
        c = {m: self.intra[m](batch.features[m], mask, batch.lengths) for m in self.modalities}
        allowed = mask[:, None, :].expand(B, N, N)                  # key j real
        if self.config.causal_attention:
            allowed = allowed & torch.ones(N, N, dtype=torch.bool, device=mask.device).tril()
        z = {}
        for m in self.modalities:
            hm = c[m]
            if self.sim is not None:
                others = [c[o] for o in self.modalities if o != m]
                kv = torch.cat(others, dim=1)                        # [B, (M-1) N, h]
                score = torch.einsum("bid,bjd->bij", self.sim[m](hm), kv)
                score = score.masked_fill(~allowed.repeat(1, 1, len(others)), float("-inf"))
                att = torch.softmax(score, dim=-1)                   # similarity-based attention
                e = torch.einsum("bij,bjd->bid", att, kv)            # inter-modal influence
                g = torch.sigmoid(self.gate[m](torch.cat([hm, e], -1)))
                hm = g * hm + (1 - g) * e                            # gated intra / inter mix
            v = self.drop(torch.relu(self.fc[m](self.drop(hm))))
            z[m] = self.out[m](v) * mask[..., None]                  # SPCL Eq. (1), zero padding
        return late_fusion_output(z)                                 # SPCL Eq. (2)
