"""merc.graphs: vectorised builders against a plain-loop reference, and closed-form edge counts."""
from __future__ import annotations

import random
from collections import Counter
from itertools import permutations

import pytest
import torch

from merc import graphs


# ---------------------------------------------------------------- plain-Python reference (tests only)
def loop_corect_edges(lengths, M, past, future, semantics, use_multi=True, use_temp=True):
    """Edge set {(src, dst, relation_name)} built one edge at a time from the rules as written.

    paper:     receiver i takes j in [i-P, i+F] clipped (j != i temporal; j == i the self loop).
    reference: source j sends to every target t in [j-wp, j+wf) clipped (official loop); the key is
               past if src earlier than tgt, future if later, self if equal. Without R_temp the
               official code adds (j, j) self loops instead.
    """
    U = sum(lengths)
    edges = set()
    off = 0
    for n in lengths:
        for k in range(M):
            for i in range(n):
                if use_temp:
                    if semantics == "paper":
                        lo = 0 if past == -1 else max(0, i - past)
                        hi = n - 1 if future == -1 else min(n - 1, i + future)
                        pairs = [(j, i) for j in range(lo, hi + 1)]          # (src, dst)
                    else:
                        j = i  # here i plays the official "source j"
                        lo = 0 if past == -1 else max(0, j - past)
                        hi = n if future == -1 else min(n, j + future)
                        pairs = [(j, t) for t in range(lo, hi)]
                    for s, d in pairs:
                        kind = "past" if s < d else "future" if s > d else "self"
                        edges.add((k * U + off + s, k * U + off + d, (kind, k, k)))
                else:
                    edges.add((k * U + off + i, k * U + off + i, ("self", k, k)))
                if use_multi:
                    for l in range(M):
                        if l != k:
                            edges.add((k * U + off + i, l * U + off + i, ("cross", k, l)))
        off += n
    return edges


def as_set(g):
    names = g.relations
    return {(int(s), int(d), names[int(t)])
            for (s, d), t in zip(g.edge_index.t().tolist(), g.edge_type.tolist())}


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("semantics", ["paper", "reference"])
def test_matches_loop_reference_on_random_batches(semantics):
    rng = random.Random(0)
    for trial in range(60):
        lengths = [rng.randint(1, 9) for _ in range(rng.randint(1, 4))]
        M = rng.randint(1, 3)
        past, future = rng.randint(-1, 12), rng.randint(-1, 12)
        use_multi, use_temp = rng.random() < 0.8, rng.random() < 0.8
        g = graphs.corect_graph(lengths, M, past, future, semantics, use_multi, use_temp)
        got = as_set(g)
        want = loop_corect_edges(lengths, M, past, future, semantics, use_multi, use_temp)
        assert got == want, (lengths, M, past, future, semantics, use_multi, use_temp)
        assert g.edge_index.shape[1] == len(got), "duplicate edges"
        assert g.edge_index.dtype == torch.long and g.edge_type.dtype == torch.long
        assert g.num_nodes == M * sum(lengths)
        assert g.edge_index.numel() == 0 or int(g.edge_index.max()) < g.num_nodes


def test_reference_window_reads_as_wf_minus_1_past_and_wp_future():
    # official flags wp=11 wf=5: a middle node receives from 4 past, itself, 11 future nodes
    g = graphs.corect_graph([40], 1, 11, 5, "reference")
    names = g.relations
    into20 = Counter(names[int(t)][0] for (s, d), t in
                     zip(g.edge_index.t().tolist(), g.edge_type.tolist()) if d == 20)
    assert into20 == {"past": 4, "self": 1, "future": 11}
    g = graphs.corect_graph([40], 1, 11, 5, "paper")
    into20 = Counter(g.relations[int(t)][0] for (s, d), t in
                     zip(g.edge_index.t().tolist(), g.edge_type.tolist()) if d == 20)
    assert into20 == {"past": 11, "self": 1, "future": 5}


@pytest.mark.parametrize("M,expected", [(3, 15), (2, 8), (1, 3)])
def test_relation_counts(M, expected):
    assert graphs.num_relations(M) == expected
    assert graphs.num_relations(M, use_multi=False) == 3 * M
    assert graphs.num_relations(M, use_temp=False) == M + M * (M - 1)
    rel = graphs.relation_names(M)
    # official ordering: past (-1) per modality, future (1), self (0kk), then cross pairs
    assert [r[0] for r in rel[:3 * M]] == ["past"] * M + ["future"] * M + ["self"] * M
    assert [r[1:] for r in rel[3 * M:]] == list(permutations(range(M), 2))


@pytest.mark.parametrize("semantics", ["paper", "reference"])
def test_closed_form_counts(semantics):
    cases = [(n, P, F) for n in (1, 2, 3, 5, 8, 13) for P in (-1, 0, 1, 2, 4, 7, 11, 20)
             for F in (-1, 0, 1, 3, 5, 9, 20)]
    for n, P, F in cases:
        for M in (1, 3):
            for use_multi, use_temp in ((True, True), (False, True), (True, False)):
                g = graphs.corect_graph([n], M, P, F, semantics, use_multi, use_temp)
                got = Counter(g.relations[int(t)] for t in g.edge_type.tolist())
                want = graphs.expected_edge_counts(n, M, P, F, semantics, use_multi, use_temp)
                want = {k: v for k, v in want.items() if v}
                assert dict(got) == want, (n, P, F, M, semantics, use_multi, use_temp)


def test_closed_form_past_formula_spot_values():
    # sum_i min(i, P) = p(2n-p-1)/2 with p = min(P, n)
    assert graphs._w(10, 3) == sum(min(i, 3) for i in range(10)) == 24
    assert graphs._w(1, 5) == 0
    assert graphs._w(4, 100) == graphs._w(4, -1) == 6


def test_window_edges_and_helpers():
    lengths = [3, 1, 4]
    ei = graphs.window_edges(lengths, 1, 2)
    got = set(map(tuple, ei.t().tolist()))
    want = set()
    off = 0
    for n in lengths:
        for i in range(n):
            for j in range(max(0, i - 1), min(n - 1, i + 2) + 1):
                if j != i:
                    want.add((off + j, off + i))
        off += n
    assert got == want
    fc = graphs.fully_connected_edges(lengths)
    assert fc.shape[1] == sum(n * n for n in lengths)
    dag = graphs.dag_edges(lengths)
    assert all(s < d for s, d in dag.t().tolist())
    assert dag.shape[1] == sum(n * (n - 1) // 2 for n in lengths)


def test_node_index_matches_mask_order():
    lengths = torch.tensor([2, 3, 1])
    idx = graphs.node_index(lengths, 4, 3)
    assert idx.shape == (3, 4, 3)
    mask = torch.arange(4)[None] < lengths[:, None]
    U = 6
    for k in range(3):
        assert idx[..., k][mask].tolist() == [k * U + u for u in range(U)]
    assert (idx[~mask] == -1).all()


def test_cache_reuses_graph_and_is_keyed():
    graphs.clear_cache()
    a = graphs.corect_graph(torch.tensor([3, 2]), 3, 2, 1)
    b = graphs.corect_graph([3, 2], 3, 2, 1)
    assert a is b
    c = graphs.corect_graph([3, 2], 3, 2, 1, semantics="reference")
    assert c is not a
    assert graphs._corect_graph.cache_info().hits >= 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="semantics"):
        graphs.corect_graph([2], 1, 1, 1, semantics="nope")
    with pytest.raises(ValueError, match=">= -1"):
        graphs.corect_graph([2], 1, -2, 1)
