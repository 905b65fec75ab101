"""MultiDAG: a directed acyclic conversation graph over the multimodal utterance features.

Nguyen et al., "Curriculum Learning Meets Directed Acyclic Graph for Multimodal Emotion
Recognition", LREC-COLING 2024 (``papers/multidag_cl.md``); the curriculum half ("+CL") is the
strategy ``bucket_cl`` (:mod:`merc.strategies.bucket_cl`), usable with any model.

What: every utterance is one node whose feature is its modalities' features concatenated
(eq. 2). Each node receives edges from the earlier utterances of its dialogue back to, and
including, its speaker's previous turn (DAG-ERC's graph), with relation 0 = same speaker,
1 = other speaker. ``dag_layers`` layers each process the nodes in dialogue order: the node's
state at layer l-1 attends over its predecessors' states at layer l (eq. 3), aggregates them
through the relation's weight (eq. 4), and two GRU cells combine the aggregate with the node's
previous state (eqs. 5-6); all layers' states are concatenated (eq. 7) and classified by an MLP.

The network is the released one (vanntc711/MultiDAG-CL@59a7587, which runs DAG-ERC's
``DAGERC_fushion`` unchanged, with ``attn_type=rgcn`` i.e. ``GAT_dialoggcn_v1``), module for module
and parameter for parameter at the defaults (pinned by tests/test_multidag.py):

* ``fc1``: Linear(emb_dim, hidden) + ReLU on the concatenated raw features (text, audio, visual in
  the released order); emb_dim = the sum of the kept modalities' dims.
* per layer: ``gather`` (Linear(2h, 1) scoring [H_i^{l-1}; H_j^l], ``Wr0`` / ``Wr1`` Linear(h, h)
  without bias), ``grus_c`` GRUCell(h, h) with (input H_i^{l-1}, hidden M_i), ``grus_p``
  GRUCell(h, h) with (input M_i, hidden H_i^{l-1}); the layer output is their sum.
* ``out_mlp``: Linear((L+1)h + emb_dim, h), ReLU, (Linear(h, h), ReLU) x (mlp_layers-1),
  Dropout, Linear(h, C). Dropout acts only there (released).

Choices, each noted at the code too:
* The released classifier also reads the raw features (``H.append(features)``); eq. 7 does not
  show them. ``classifier_reads_features`` (default true = released) switches.
* The released code also builds ``fcs`` (Linear(2h, h) per layer) and
  ``attentive_node_features`` (Linear(in_dim, in_dim)) and never uses them in forward
  (``nodal_att_type=None``); dead parameters are left out here (they train nothing). With them the
  released IEMOCAP model would have 4*180,300 + 4448*4449 more parameters (see the test).
* Eq. (1)'s modality encoders (BiLSTM for text, FC for audio / visual) are not in the released
  network, which feeds the concatenated features straight to ``fc1``; ``modality_encoder="paper"``
  adds them (text: BiLSTM with ``encoder_size``/2 per direction, packed by the dialogue lengths;
  audio / visual: Linear + ReLU to ``encoder_size``), concatenated (eq. 2) before ``fc1``.
* Edges: ``speaker_window`` = the released ``windowp`` (1: back to the speaker's previous turn;
  k: back to the k-th previous turn of the speaker; -1: every earlier utterance). A node without an
  earlier same-speaker turn receives from every earlier utterance (released). No self loops.
* Attention masking uses -inf instead of the released ``- 1e30`` (identical weights in float32).
  Computation is reorganised, not changed: the scoring Linear(2h, 1) is split into its query and
  key halves, ``Wr0``/``Wr1`` are applied once per node instead of once per (node, step), the GRU
  gates that depend on H^{l-1} only are computed for all nodes in one matmul (the GRUCell modules
  keep their parameters; :func:`_gru_gates` is their update), and each step only looks at the
  span of positions that holds predecessors in the batch.
  tests/test_multidag.py checks the outputs against a literal re-implementation of the released
  loop.
* Missing modalities (``batch.present``): their features are zeros (the batch contract); the
  released model never sees missing entries.

Padding: nodes are processed position by position for the whole batch (as released); a padded
position has no edges and its outputs are discarded; real nodes never attend to padding (it comes
after them).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from merc.configs.multidag import MultiDAGConfig
from merc.data.dataset import Batch, DatasetMeta
from merc.models.base import MercModel, Output, register_model

#: the released feature order (``u['cls'][0] + u['cls'][1] + u['cls'][2]``: text, audio, visual)
RELEASED_ORDER = ("text", "audio", "visual")


def dag_adjacency(speakers: torch.Tensor, mask: torch.Tensor, window: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """DAG-ERC's graph for a padded batch, vectorised: ``(adj, same)``, both bool [B, N, N].

    ``adj[b, i, j]``: utterance j sends to utterance i, i.e. j < i and fewer than ``window``
    turns of i's speaker lie strictly between j and i (so the walk back from i stops at, and
    includes, the ``window``-th earlier turn of its speaker; ``window=-1``: all j < i).
    ``same[b, i, j]``: i and j have the same speaker (relation 0), restricted to real pairs.
    """
    if window < -1 or window == 0:
        raise ValueError(f"speaker_window must be >= 1 or -1 (unbounded), found {window}")
    B, N = speakers.shape
    real = mask[:, :, None] & mask[:, None, :]
    same = (speakers[:, :, None] == speakers[:, None, :]) & real
    earlier = torch.ones(N, N, dtype=torch.bool, device=speakers.device).tril(-1)[None]
    adj = earlier & real
    if window == -1:
        return adj, same
    # between[b, i, j] = #{k : j < k < i, speaker k == speaker i}: a reversed cumulative sum of
    # the same-speaker predecessors along j, minus j itself.
    sp = (same & earlier).to(torch.int32)
    from_j = sp.flip(-1).cumsum(-1).flip(-1)            # #{k >= j, k < i, same speaker}
    between = from_j - sp
    return adj & (between < window), same


def dag_edges(speakers: torch.Tensor, mask: torch.Tensor, window: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same graph PyG-style: ``edge_index`` [2, E] over flat utterance ids (the row order of
    ``x[mask]``; row 0 source j, row 1 target i) and ``edge_type`` [E] (0 same speaker, 1 other)."""
    adj, same = dag_adjacency(speakers, mask, window)
    flat = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    flat[mask] = torch.arange(int(mask.sum()), device=mask.device)
    b, i, j = adj.nonzero(as_tuple=True)
    edge_index = torch.stack([flat[b, j], flat[b, i]])
    order = torch.argsort(edge_index[1] * max(int(mask.sum()), 1) + edge_index[0])
    edge_type = (~same[b, i, j]).long()
    return edge_index[:, order], edge_type[order]


class DagLayer(nn.Module):
    """One MultiDAG layer: eqs. (3)-(6) for every node, in dialogue order (released names)."""

    def __init__(self, h: int, use_relations: bool):
        super().__init__()
        self.linear = nn.Linear(2 * h, 1)                       # W_alpha of eq. (3)
        self.Wr0 = nn.Linear(h, h, bias=False)                  # W_0 of eq. (4): same speaker
        self.Wr1 = nn.Linear(h, h, bias=False) if use_relations else None  # W_1: other speaker
        self.grus_c = nn.GRUCell(h, h)                          # eq. (5), GRU_H
        self.grus_p = nn.GRUCell(h, h)                          # eq. (6), GRU_M
        self.h = h

    def forward(self, H: torch.Tensor, adj: torch.Tensor, same: torch.Tensor,
                lo: list[int]) -> torch.Tensor:
        B, N, h = H.shape
        c, p = self.grus_c, self.grus_p
        w_q, w_k = self.linear.weight[0, :h], self.linear.weight[0, h:]
        # everything that depends on H^{l-1} only is computed for all nodes at once: the query
        # half of eq. (3), GRU_H's input gates and GRU_M's hidden gates (H^{l-1} is GRU_H's input
        # and GRU_M's hidden state)
        q_score = (H @ w_q + self.linear.bias).unbind(1)        # [B] per node
        xs = H.unbind(1)
        gi_c = F.linear(H, c.weight_ih, c.bias_ih).unbind(1)     # [B, 3h] per node
        gh_p = F.linear(H, p.weight_hh, p.bias_hh).unbind(1)
        # what depends on M_i: GRU_H's hidden gates and GRU_M's input gates, one matmul per node
        w_m = torch.cat([c.weight_hh, p.weight_ih])
        b_m = torch.cat([c.bias_hh, p.bias_ih])
        # what each new state sends on: W_0 H_j, W_1 H_j (eq. 4) and the key half of eq. (3)
        w_out = torch.cat([self.Wr0.weight] + ([self.Wr1.weight] if self.Wr1 is not None else [])
                          + [w_k[None]])
        states, k_score, v_same, v_other = [], [], [], []
        zero = H.new_zeros(B, h)
        for i in range(N):
            a = lo[i]
            if a >= i:
                M = zero                                        # no predecessor: M = 0 (released)
            else:
                sl = slice(a, i)
                # Eq. (3): a_ij = softmax_{j in N_i}(W_alpha [H_j^l || H_i^{l-1}])
                e = q_score[i][:, None] + torch.stack(k_score[a:i], 1)
                e = e.masked_fill(~adj[:, i, sl], float("-inf"))
                has = adj[:, i, sl].any(1, keepdim=True)
                alpha = torch.where(has, torch.softmax(e.masked_fill(~has, 0.0), 1),
                                    torch.zeros_like(e))
                # Eq. (4): M_i = sum_j a_ij W_{r_ij} H_j^l, r_ij = same / other speaker
                if self.Wr1 is None:                           # one W for every edge
                    M = torch.einsum("bj,bjd->bd", alpha, torch.stack(v_same[a:i], 1))
                else:
                    s = same[:, i, sl].to(H.dtype)
                    M = torch.einsum("bj,bjd->bd", alpha * s, torch.stack(v_same[a:i], 1)) + \
                        torch.einsum("bj,bjd->bd", alpha * (1 - s), torch.stack(v_other[a:i], 1))
            gh_c, gi_p = F.linear(M, w_m, b_m).split(3 * h, dim=1)
            C = _gru_gates(gi_c[i], gh_c, M)                    # Eq. (5): GRU_H(H_i^{l-1}, M_i)
            P = _gru_gates(gi_p, gh_p[i], xs[i])                # Eq. (6): GRU_M(M_i, H_i^{l-1})
            out = C + P                                         # summand of eq. (7)
            states.append(out)
            sent = F.linear(out, w_out)
            v_same.append(sent[:, :h])
            v_other.append(sent[:, h:2 * h] if self.Wr1 is not None else None)
            k_score.append(sent[:, -1])                         # key half of eq. (3)
        return torch.stack(states, 1)


def _gru_gates(gi: torch.Tensor, gh: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """nn.GRUCell from its pre-computed input gates ``gi`` = W_ih x + b_ih and hidden gates
    ``gh`` = W_hh h + b_hh (PyTorch's r, z, n layout): h' = (1 - z) n + z h."""
    i_r, i_z, i_n = gi.chunk(3, 1)
    h_r, h_z, h_n = gh.chunk(3, 1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (hidden - n)


@register_model("multidag", MultiDAGConfig,
                paper="Nguyen et al., LREC-COLING 2024 (MultiDAG; +CL = strategy bucket_cl)")
class MultiDAG(MercModel):
    """MultiDAG (see the module docstring)."""

    config: MultiDAGConfig

    def __init__(self, config: MultiDAGConfig, meta: DatasetMeta):
        super().__init__(config, meta)
        cfg, h = config, config.hidden_size
        order = [m for m in RELEASED_ORDER if m in meta.modalities]
        self.order = order + [m for m in meta.modalities if m not in order]
        if not self.order:
            raise ValueError("MultiDAG needs at least one modality")
        self.encoders = None
        if cfg.modality_encoder == "paper":
            e = cfg.encoder_size
            self.encoders = nn.ModuleDict({
                m: (nn.LSTM(meta.dims[m], e // 2, batch_first=True, bidirectional=True)
                    if m == "text" else nn.Sequential(nn.Linear(meta.dims[m], e), nn.ReLU()))
                for m in self.order})
            emb_dim = sum(2 * (e // 2) if m == "text" else e for m in self.order)
        else:
            emb_dim = sum(meta.dims[m] for m in self.order)
        self.emb_dim = emb_dim
        self.fc1 = nn.Linear(emb_dim, h)
        self.layers = nn.ModuleList(DagLayer(h, cfg.use_relations) for _ in range(cfg.dag_layers))
        in_dim = h * (cfg.dag_layers + 1) + (emb_dim if cfg.classifier_reads_features else 0)
        mlp: list[nn.Module] = [nn.Linear(in_dim, h), nn.ReLU()]
        for _ in range(cfg.mlp_layers - 1):
            mlp += [nn.Linear(h, h), nn.ReLU()]
        mlp += [nn.Dropout(cfg.dropout), nn.Linear(h, meta.num_classes)]
        self.out_mlp = nn.Sequential(*mlp)

    def _features(self, batch: Batch) -> torch.Tensor:
        xs = [batch.features[m] for m in self.order]
        if self.encoders is not None:
            out = []
            for m, x in zip(self.order, xs):
                enc = self.encoders[m]
                if m == "text":   # Eq. (1): h^l = BiLSTM(u^l) over the dialogue, packed
                    packed = pack_padded_sequence(x, batch.lengths.clamp(min=1).cpu(),
                                                  batch_first=True, enforce_sorted=False)
                    y, _ = enc(packed)
                    x, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
                else:             # Eq. (1): h^a = FC(u^a), h^v = FC(u^v)
                    x = enc(x)
                out.append(x)
            xs = out
        return torch.cat(xs, dim=-1)                             # Eq. (2): H^0 = h^a ⊕ h^v ⊕ h^l

    def forward(self, batch: Batch) -> Output:
        cfg = self.config
        mask = batch.mask
        feats = self._features(batch)
        adj, same = dag_adjacency(batch.speakers, mask, cfg.speaker_window)
        # first predecessor position of each node, minimum over the batch (the step's span)
        N = mask.shape[1]
        pos = torch.arange(N, device=mask.device)
        first = torch.where(adj, pos[None, None, :], N).amin(dim=2)   # [B, N]
        lo = first.amin(dim=0).tolist()
        H = [F.relu(self.fc1(feats))]                            # H^0 (released fc1 + ReLU)
        for layer in self.layers:
            H.append(layer(H[-1], adj, same, lo))
        if cfg.classifier_reads_features:
            H.append(feats)                                      # released: raw features too
        logits = self.out_mlp(torch.cat(H, dim=-1))              # Eq. (7): ||_l H^l -> MLP
        return Output(logits=logits.masked_fill(~mask[..., None], 0.0))
