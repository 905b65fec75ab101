"""BiDDIN as an SPCL late-fusion backbone.

Zhang et al., "Modeling both Intra- and Inter-modal Influence for Real-Time Emotion Detection in
Conversations", ACM MM 2020 (SPCL ref. [60]); used by SPCL (Nguyen et al., NCAA 2026, sec. 4.2,
``papers/spcl.md``) as the emotion prediction network phi_m of SPCL Eq. (1), the uni-modal logits
summed into the joint logit (SPCL Eq. (2)).

What (``encoder="released"``, the default: the SPCL copy ``code/backbone/BiDDIN.py``
``MultiBiModel`` at its defaults, 8,236,836 parameters at a512/t768/v1024, hidden 200 / 150 / 100 /
100, 6 classes, pinned by ``tests/test_backbones.py``): per modality m an independent
``BiModel_single``, a bidirectional DialogueRNN with self-attention (BiDDIN's intra-modal stream;
the SPCL copy has no inter-modal stream, the modalities meet only in the logit sum):

1. a DialogueRNN per direction (``DialogueRNNCell``, listener state off, "simple" attention), over
   the utterances u_t of each dialogue, with party states q_{s,t} (D_p = ``party_size``), global
   states g_t (D_g = ``hidden_size``) and emotion states e_t (D_e = ``emotion_size``):
   g_t = GRU_G([u_t ; q_{s(t),t-1}], g_{t-1});
   c_t = sum_{t'<t} softmax_t'(w^T (g_t' + PE_t')) (g_t' + PE_t')  (sinusoidal positions, dropout 0.1);
   q_{s(t),t} = GRU_P([u_t ; c_t], q_{s(t),t-1}) for the speaker, the others keep their state;
   e_t = GRU_E(q_{s(t),t}, e_{t-1}); dropout after each cell;
   the backward direction runs on each dialogue reversed, its states reversed back;
2. E = [e^fwd ; e^bwd] + PE (dropout 0.1), then 4-head self-attention over the dialogue
   (W_Q, W_K, W_V, output ``fc``, residual, a parameter-free LayerNorm);
3. ReLU(Linear(2 D_e, 2 D_h)), dropout, Linear(2 D_h, C) -> z^m (SPCL Eq. (1)), summed (Eq. (2)).

The release also creates, per modality, an unused ``uni_fc = Linear(D_h, C)`` and the attention's
unused query ``transform``; both are created here (they count in the parameter total, get no
gradient). Remaining differences from the release: the self-attention is masked to the real
utterances and splits heads per dialogue (the release reshapes the time-major [T, B, E] tensor as
[B, T, H, E/H], mixing dialogues of a batch, and attends over padding); dialogues run as one batch
through the step-wise cells, each dialogue's backward pass starting at its own last utterance (as
the release's ``_reverse_seq``); ``extras["features_<m>"]`` carries the classifier's hidden layer.

Speed: the cells are sequential over the utterances, so a step is many small ops. ``kernels="fused"``
(default, :func:`merc.models.backbones._dialoguernn.dialogue_rnns_fused`) runs the 2 M chains
(modalities x directions) in one loop over time with batched matmuls, the utterance parts of the
GRU inputs precomputed for all steps in one matmul per modality; equal to ``kernels="modules"`` (one
``DialogueRNN`` module per chain) to 1e-5 on logits and gradients (``tests/test_backbones_fused.py``;
dropouts: same distribution, not the same random stream). What stays quadratic in the dialogue
length is the release's own: the attention re-reads the whole global history every step, with a
fresh positional dropout on it. ``autocast_bf16`` (opt-in): the utterance projections in bf16 (fused;
the module path runs under autocast), the recurrence in fp32.

``encoder="light"`` keeps the lighter, vectorised structure this project used before:
1. *intra-modal* influence: a bidirectional GRU over the dialogue on modality m alone,
   c^m_i = BiGRU_m(x^m)_i (SPCL sec. 4.2: "a bidirectional GRU for modality-specific encoding");
2. *inter-modal* influence: similarity-based attention from c^m_i over the contexts of every
   *other* modality m' across the dialogue, e^m_i = sum_{m' != m, j} softmax(c^m_i^T W c^{m'}_j)
   c^{m'}_j (BiDDIN's cross-modal interaction; SPCL: "edge weights set by similarity-based
   attention");
3. a gate that mixes the two streams, g = sigma(W_g [c^m_i ; e^m_i]),
   h^m_i = g * c^m_i + (1 - g) * e^m_i;
4. classifier Linear-ReLU-dropout-Linear -> z^m.

Choices (light):
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
from torch import nn

from merc.configs.backbones import BiDDINConfig
from merc.data.dataset import Batch, DatasetMeta

from merc.models.backbones._common import SequenceEncoder, bf16_autocast, late_fusion_output
from merc.models.backbones._dialoguernn import BiModelSingle, dialogue_rnns_fused
from merc.models.base import MercModel, Output, register_model
from merc.models.kernels import fused as use_fused


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
        self.released = cfg.encoder == "released"
        if self.released:
            self.bimodel = nn.ModuleDict({m: BiModelSingle(
                meta.dims[m], cfg.hidden_size, cfg.party_size, cfg.emotion_size,
                cfg.classifier_size, meta.num_classes, cfg.dropout) for m in self.modalities})
            # the release's per-modality uni_fc: created, never used
            self.uni_fc = nn.ModuleDict({m: nn.Linear(cfg.classifier_size, meta.num_classes)
                                         for m in self.modalities})
            self.num_parties = max(meta.num_speakers, 1)
            return
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

    def unused_parameters(self) -> set[str]:
        """The released per-modality ``uni_fc`` and the attention's query ``transform``."""
        if self.config.encoder != "released":
            return set()
        mods = ("audio", "text", "visual")
        return ({f"bimodel.{m}.transform.weight" for m in mods}
                | {f"uni_fc.{m}.{p}" for m in mods for p in ("weight", "bias")})

    def forward(self, batch: Batch) -> Output:
        if self.released:
            return self._forward_released(batch)
        mask = batch.mask
        B, N = mask.shape
        c = {m: self.intra[m](batch.features[m], mask, batch.lengths) for m in self.modalities}
        allowed = mask[:, None, :].expand(B, N, N)                  # key j real
        if self.config.causal_attention:
            allowed = allowed & torch.ones(N, N, dtype=torch.bool, device=mask.device).tril()
        z, feats = {}, {}
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
            feats[f"features_{m}"] = v
        out = late_fusion_output(z)                                  # SPCL Eq. (2)
        out.extras.update(feats)
        return out

    def _forward_released(self, batch: Batch) -> Output:
        mask = batch.mask
        spk = batch.speakers.clamp(0, self.num_parties - 1)
        z, feats = {}, {}
        models = [self.bimodel[m] for m in self.modalities]
        fused, bf16 = use_fused(self.config.kernels), self.config.autocast_bf16
        if fused:                                                    # all chains at once
            states = dialogue_rnns_fused(models, [batch.features[m] for m in self.modalities],
                                         spk, mask, batch.lengths, self.num_parties, bf16)
        for k, m in enumerate(self.modalities):
            bm = models[k]
            if fused:
                logit, hidden = bm.head(bm.drop(states[k][0]), bm.drop(states[k][1]), mask)
            else:
                with bf16_autocast(mask.device, bf16):
                    logit, hidden = bm(batch.features[m], spk, mask, batch.lengths,
                                       self.num_parties)
                logit, hidden = logit.float(), hidden.float()
            z[m] = logit * mask[..., None]                           # SPCL Eq. (1), zero padding
            feats[f"features_{m}"] = hidden
        out = late_fusion_output(z)                                  # SPCL Eq. (2)
        out.extras.update(feats)
        return out
