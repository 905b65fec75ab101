"""Edge builders for the graph models: vectorised (tensor ops, no per-edge Python loops) and cached.

Every builder works on a *batch of dialogues* given by their lengths; dialogues are disconnected.
Edges are returned PyG-style as ``edge_index`` [2, E] (row 0 = source, row 1 = target) and, with
PyG's default ``flow="source_to_target"``, a node **receives** messages from the sources of the
edges that point at it. All windows below are phrased from the receiving node's point of view.

Utterance order and node layout
-------------------------------
Utterances are numbered in *flat batch order*: dialogue ``b``'s utterance ``n`` has flat index
``u = offset[b] + n`` with ``offset = cumsum(lengths) - lengths``; this is exactly the row order of
``x[batch.mask]`` for a padded ``[B, N, d]`` tensor (dialogues are left-aligned). With ``U`` real
utterances and ``M`` modalities the multimodal graph of CORECT has ``M * U`` nodes laid out
**modality-major**::

    node(k, u) = k * U + u          k = modality position in meta.modalities, u = flat utterance

so that modality ``k``'s nodes are the contiguous slice ``[k*U, (k+1)*U)`` (the official CORECT
layout too). :func:`node_index` gives the map from padded positions ``[B, N]`` to node ids.

Window rules (CORECT's temporal relation R_temp, eq. 6)
-------------------------------------------------------
* ``"paper"`` (default): node ``i`` receives, within its modality, from the ``P`` preceding and the
  ``F`` following utterances of its dialogue: sources ``j`` in ``[i-P, i+F]`` clipped to the dialogue,
  ``j != i`` for the temporal (past/future) relations; the self loop ``j == i`` is its own relation.
  (Eq. 6 prints strict bounds ``i-P < j < i`` and ``i < j < i+F``, which would give only P-1 / F-1
  neighbours; we follow the prose "the number of past and next utterances" and Fig. 3, where
  [P, F] = [2, 1] draws two past and one future neighbour.)
* ``"reference"``: the official code's edge set, exactly. Each source ``j`` sends to the targets
  ``t`` in ``[j-wp, j+wf)`` clipped (upper bound exclusive, ``j`` itself included when ``wf >= 1``).
  Read from the receiver ``i``: sources ``j`` in ``[i-(wf-1), i+wp]``, i.e. **wf-1 past and wp future**
  neighbours (the mirror of the flag names), plus the self loop iff ``wf >= 1``. When R_temp is
  switched off the official code adds the self loops explicitly, so they are always present then.
* A window of ``-1`` means unbounded on that side (both rules; the official code's ``-1``).

Relation types (ids are compact over the *active* relations, in this order)
--------------------------------------------------------------------------
with R_temp on:  ``past_k`` for k < M, ``future_k`` for k < M, ``self_k`` for k < M  (3M types)
with R_temp off: ``self_k`` for k < M                                                  (M types)
with R_multi on: then ``cross_(a,b)`` for every ordered pair a != b, lexicographic    (M(M-1) types)

"past" means the source utterance precedes the target (the official key's temporal type ``-1``),
"future" that it follows (``1``), "self" source == target (``0kk``); cross-modal edges join the
*same* utterance's modality nodes (eq. 5, key ``0ab``). This ordering equals the official
``edge_type_to_idx``. Full graph: M=3 -> 9 + 6 = 15 types, M=2 -> 6 + 2 = 8, M=1 -> 3.

Closed-form edge counts for one dialogue of length n, per modality (temporal) or per ordered pair
------------------------------------------------------------------------------------------------
Let ``w(n, K) = sum_{i=0}^{n-1} min(i, K) = k (2n - k - 1) / 2`` with ``k = min(K, n)``
(``k = n`` for an unbounded ``K = -1``; this gives ``n(n-1)/2`` whenever ``K >= n-1``).

* paper, window [P, F]:      past_k = w(n, P),        future_k = w(n, F),   self_k = n
* reference, flags (wp, wf): past_k = w(n, max(wf-1, 0)),  future_k = w(n, wp),
                             self_k = n if (wf >= 1 or R_temp off) else 0
  (an unbounded ``wf = -1`` gives past_k = w(n, -1) = n(n-1)/2)
* cross_(a,b) = n for each of the M(M-1) ordered pairs (both rules).

Caching
-------
The CORECT graph is cached (LRU) on (dialogue lengths tuple, window, semantics, number of modalities,
relation switches, device). Cached tensors are shared: callers must not modify them in place.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import permutations
from typing import Literal, NamedTuple, Sequence, Union

import torch

Semantics = Literal["paper", "reference"]
Lengths = Union[torch.Tensor, Sequence[int]]

__all__ = ["RelGraph", "corect_graph", "relation_names", "num_relations", "window_edges",
           "fully_connected_edges", "dag_edges", "node_index", "utterance_positions",
           "receive_range", "expected_edge_counts", "clear_cache"]


def _as_tuple(lengths: Lengths) -> tuple[int, ...]:
    if isinstance(lengths, torch.Tensor):
        return tuple(int(x) for x in lengths.reshape(-1).tolist())
    return tuple(int(x) for x in lengths)


def utterance_positions(lengths: Lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """(position within its dialogue, length of its dialogue) per flat utterance, both long [U]."""
    lens = torch.as_tensor(_as_tuple(lengths), dtype=torch.long)
    if (lens < 0).any():
        raise ValueError(f"dialogue lengths must be >= 0, found {lens.tolist()}")
    U = int(lens.sum())
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(U) - torch.repeat_interleave(starts, lens)
    return pos, torch.repeat_interleave(lens, lens)


def node_index(lengths: Lengths, max_len: int | None = None, num_modalities: int = 1) -> torch.Tensor:
    """Node id of every padded position: long [B, N, M], ``-1`` at padding (modality-major layout)."""
    lens = torch.as_tensor(_as_tuple(lengths), dtype=torch.long)
    B, U = len(lens), int(lens.sum())
    N = int(lens.max()) if max_len is None and B else int(max_len or 0)
    mask = torch.arange(N)[None, :] < lens[:, None]
    out = torch.full((B, N, num_modalities), -1, dtype=torch.long)
    flat = torch.arange(U)
    for k in range(num_modalities):  # M <= 3: a loop over modalities, not edges
        out[..., k][mask] = flat + k * U
    return out


def receive_range(past: int, future: int, semantics: Semantics = "paper",
                  longest: int = 0) -> tuple[int, int]:
    """Offsets ``d = src - dst`` a receiver takes within its modality: ``lo <= d <= hi``.

    ``"paper"``: ``[-P, F]``. ``"reference"`` with flags ``(wp, wf)``: ``[1 - wf, wp]`` (so wf-1 past
    nodes, wp future nodes, and the self loop iff ``wf >= 1``). ``-1`` (unbounded) becomes
    ``longest`` on that side.
    """
    if semantics == "paper":
        return -_bound(past, longest), _bound(future, longest)
    if semantics == "reference":
        return (-longest if future == -1 else 1 - _bound(future, longest)), _bound(past, longest)
    raise ValueError(f"window semantics must be 'paper' or 'reference', found {semantics!r}")


def _pairs(lengths: Lengths, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (src, dst, d = src - dst) with d in [lo, hi] inside each dialogue; flat utterance ids."""
    pos, dlen = utterance_positions(lengths)
    U = pos.numel()
    if U == 0 or hi < lo:
        e = torch.zeros(0, dtype=torch.long)
        return e, e, e
    cap = int(dlen.max()) - 1                      # no offset beyond the longest dialogue matters
    lo, hi = max(lo, -cap), min(hi, cap)
    if hi < lo:
        e = torch.zeros(0, dtype=torch.long)
        return e, e, e
    d = torch.arange(lo, hi + 1)
    jpos = pos[:, None] + d[None, :]               # [U, K]
    valid = (jpos >= 0) & (jpos < dlen[:, None])
    dst = torch.arange(U)[:, None].expand_as(jpos)[valid]
    dd = d[None, :].expand_as(jpos)[valid]
    return dst + dd, dst, dd


def _bound(w: int, big: int) -> int:
    if w < -1:
        raise ValueError(f"window sizes must be >= -1 (-1 = unbounded), found {w}")
    return big if w == -1 else w


def window_edges(lengths: Lengths, past: int, future: int, self_loops: bool = False) -> torch.Tensor:
    """Utterance-level window graph: node i receives from j in [i-past, i+future] within its
    dialogue (``-1`` = unbounded), ``j != i`` unless ``self_loops``. Returns edge_index [2, E]."""
    big = max(_as_tuple(lengths) or (0,))
    src, dst, d = _pairs(lengths, -_bound(past, big), _bound(future, big))
    if not self_loops:
        keep = d != 0
        src, dst = src[keep], dst[keep]
    return torch.stack([src, dst])


def fully_connected_edges(lengths: Lengths, self_loops: bool = True) -> torch.Tensor:
    """Every utterance receives from every utterance of its dialogue."""
    return window_edges(lengths, -1, -1, self_loops)


def dag_edges(lengths: Lengths, past: int = -1, self_loops: bool = False) -> torch.Tensor:
    """Causal graph: each utterance receives from (up to ``past``) preceding utterances only."""
    return window_edges(lengths, past, 0, self_loops)


def relation_names(num_modalities: int, use_multi: bool = True, use_temp: bool = True
                   ) -> tuple[tuple[str, int, int], ...]:
    """Active relation types in id order: ``(kind, src_modality, dst_modality)``."""
    M = num_modalities
    rel: list[tuple[str, int, int]] = []
    if use_temp:
        rel += [("past", k, k) for k in range(M)] + [("future", k, k) for k in range(M)]
    rel += [("self", k, k) for k in range(M)]
    if use_multi:
        rel += [("cross", a, b) for a, b in permutations(range(M), 2)]
    return tuple(rel)


def num_relations(num_modalities: int, use_multi: bool = True, use_temp: bool = True) -> int:
    return len(relation_names(num_modalities, use_multi, use_temp))


class RelGraph(NamedTuple):
    """A relational multimodal graph: nodes laid out modality-major (``node = k*U + u``)."""

    edge_index: torch.Tensor          # long [2, E], row 0 source, row 1 target
    edge_type: torch.Tensor           # long [E], index into ``relations``
    num_nodes: int                    # M * U
    num_utterances: int               # U
    relations: tuple[tuple[str, int, int], ...]


@lru_cache(maxsize=512)
def _corect_graph(lengths: tuple[int, ...], past: int, future: int, semantics: str, M: int,
                  use_multi: bool, use_temp: bool, device: str) -> RelGraph:
    U = sum(lengths)
    relations = relation_names(M, use_multi, use_temp)
    ks = torch.arange(M)
    srcs, dsts, types = [], [], []
    if use_temp:
        lo, hi = receive_range(past, future, semantics, max(lengths or (0,)))
        src, dst, d = _pairs(lengths, lo, hi)
        # temporal kind per edge: 0 past (src earlier), 1 future (src later), 2 self
        kind = torch.where(d < 0, 0, torch.where(d > 0, 1, 2))
        srcs.append((src[None, :] + ks[:, None] * U).reshape(-1))
        dsts.append((dst[None, :] + ks[:, None] * U).reshape(-1))
        types.append((kind[None, :] * M + ks[:, None]).reshape(-1))
    else:
        u = torch.arange(U)
        node = (u[None, :] + ks[:, None] * U).reshape(-1)
        srcs.append(node)
        dsts.append(node)
        types.append(ks.repeat_interleave(U))
    if use_multi and M > 1:
        base = 3 * M if use_temp else M
        pairs = torch.tensor(list(permutations(range(M), 2)), dtype=torch.long)   # [P, 2]
        u = torch.arange(U)
        srcs.append((pairs[:, :1] * U + u[None, :]).reshape(-1))
        dsts.append((pairs[:, 1:] * U + u[None, :]).reshape(-1))
        types.append((base + torch.arange(len(pairs)))[:, None].expand(-1, U).reshape(-1))
    edge_index = torch.stack([torch.cat(srcs), torch.cat(dsts)]).to(device)
    edge_type = torch.cat(types).to(device)
    return RelGraph(edge_index, edge_type, M * U, U, relations)


def corect_graph(lengths: Lengths, num_modalities: int, window_past: int, window_future: int,
                 semantics: Semantics = "paper", use_multi: bool = True, use_temp: bool = True,
                 device: torch.device | str = "cpu") -> RelGraph:
    """CORECT's multimodal relational graph (eqs. 5-6) for a batch of dialogues (cached).

    ``window_past``/``window_future`` are P/F under ``"paper"`` and the official flags wp/wf under
    ``"reference"`` (see the module docstring for both rules and the edge counts).
    """
    if semantics not in ("paper", "reference"):
        raise ValueError(f"window semantics must be 'paper' or 'reference', found {semantics!r}")
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, found {num_modalities}")
    _bound(window_past, 0), _bound(window_future, 0)
    return _corect_graph(_as_tuple(lengths), int(window_past), int(window_future), semantics,
                         int(num_modalities), bool(use_multi), bool(use_temp), str(device))


def _w(n: int, K: int) -> int:
    k = n if K == -1 else min(K, n)
    return k * (2 * n - k - 1) // 2


def expected_edge_counts(n: int, num_modalities: int, window_past: int, window_future: int,
                         semantics: Semantics = "paper", use_multi: bool = True,
                         use_temp: bool = True) -> dict[tuple[str, int, int], int]:
    """Closed-form number of edges per relation type for one dialogue of length ``n``."""
    out = {}
    for rel in relation_names(num_modalities, use_multi, use_temp):
        kind = rel[0]
        if kind == "cross":
            out[rel] = n
        elif kind == "self":
            drop = use_temp and semantics == "reference" and window_future == 0
            out[rel] = 0 if drop else n
        elif semantics == "paper":
            out[rel] = _w(n, window_past if kind == "past" else window_future)
        elif kind == "past":   # reference: receiver sees wf-1 past nodes
            out[rel] = _w(n, -1 if window_future == -1 else max(window_future - 1, 0))
        else:                  # reference: receiver sees wp future nodes
            out[rel] = _w(n, window_past)
    return out


def clear_cache() -> None:
    _corect_graph.cache_clear()
