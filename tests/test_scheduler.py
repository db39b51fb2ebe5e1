"""CPU unit tests of the work-list scheduler (no kernel runs): properties that must hold for any
batch. Every KV token of every query tile is visited exactly once; chunks are BLOCK_N-aligned,
balanced and at least the policy's minimum; partial rows and merge counters of split requests are
disjoint and inside the plan's totals; CUDA-graph grids are never exceeded (``max_grid``)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashinfer_triton.attention.config import SplitPolicy
from flashinfer_triton.attention.scheduler import (
    ITEM_FIELDS, _one_tile_items, _tiled_items, choose_chunk, max_grid, plan_work,
)

POLICIES = [SplitPolicy(2, 2, 256, 4), SplitPolicy(2, 1, 64, 4), SplitPolicy(1, 1, 16, 2)]


def unpack(plan):
    out = {}
    for name, (start, n) in plan.offsets.items():
        out[name] = plan.host[start:start + n].astype(np.int64)
    return out


def check_plan(plan, qo_lens, kv_lens, tile_q, block_n, causal, fixed=None):
    f = unpack(plan)
    batch = len(kv_lens)
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)])
    items = [i for i in range(plan.grid_items) if f["item_req"][i] >= 0]
    req = f["item_req"][items]
    assert (f["item_qo_begin"][items] == qo_indptr[req]).all() and (f["item_qo_len"][items] == qo_lens[req]).all()
    assert (f["item_kv_len"][items] == kv_lens[req]).all()
    assert len(items) == plan.num_items
    assert (f["item_req"][plan.num_items:] == -1).all(), "padding items must carry request -1"
    if plan.chunk_size:
        assert plan.chunk_size % block_n == 0
        if fixed:
            assert plan.chunk_size == -(-fixed // block_n) * block_n
    covered = {}
    for i in items:
        b, q0 = int(f["item_req"][i]), int(f["item_q_start"][i])
        lo, hi = int(f["item_kv_start"][i]), int(f["item_kv_end"][i])
        assert q0 % tile_q == 0 and 0 <= q0 < qo_lens[b]
        assert 0 <= lo <= hi <= kv_lens[b] and lo % block_n == 0
        if plan.chunk_size:
            assert hi - lo <= plan.chunk_size
        covered.setdefault((b, q0), []).append(dict(lo=lo, hi=hi, chunk=int(f["item_chunk"][i]),
                                                    n=int(f["item_num_chunks"][i]), base=int(f["item_part_base"][i]),
                                                    counter=int(f["item_counter"][i])))
    rows, counters = [], []
    for b in range(batch):
        tiles = -(-qo_lens[b] // tile_q)
        bases = set()
        for t in range(tiles):
            chunks = sorted(covered.get((b, t * tile_q), []), key=lambda c: c["lo"])
            assert chunks, f"request {b} tile {t} has no item"
            # The chunks of a tile tile [0, kv_len) exactly, in chunk order.
            assert chunks[0]["lo"] == 0 and chunks[-1]["hi"] == kv_lens[b]
            assert all(a["hi"] == c["lo"] for a, c in zip(chunks, chunks[1:]))
            assert [c["chunk"] for c in chunks] == list(range(len(chunks)))
            assert all(c["n"] == len(chunks) for c in chunks)
            assert len({(c["base"], c["counter"]) for c in chunks}) == 1, "a tile's chunks share one merge"
            bases.add(chunks[0]["base"])
            if len(chunks) > 1:
                counters.append((chunks[0]["counter"], chunks[0]["counter"] + 1))
            else:
                assert chunks[0]["base"] == -1, "an unsplit request writes no partials"
        assert sum(1 for k in covered if k[0] == b) == tiles
        assert len(bases) <= 1, "one partial-row base per request"
        if bases and bases != {-1}:
            base = bases.pop()
            rows.append((base, base + covered[(b, 0)][0]["n"] * qo_lens[b]))
    # Split requests: disjoint partial-row ranges and merge counters, inside the plan's totals.
    for spans, total in ((rows, plan.num_partial_rows), (counters, plan.num_counters)):
        spans.sort()
        assert all(a[1] <= c[0] for a, c in zip(spans, spans[1:]))
        assert not spans or spans[-1][1] <= total
    assert plan.num_split_requests == len(rows)
    if causal and plan.num_items > 1:
        f_q_last = np.minimum(f["item_q_start"] + tile_q, f["item_qo_len"])
        work = [min(f["item_kv_end"][i], f_q_last[i] + f["item_kv_len"][i] - f["item_qo_len"][i])
                - f["item_kv_start"][i] for i in items]
        assert all(a >= c for a, c in zip(work, work[1:])), "causal items must run longest first"


batches = st.integers(1, 24).flatmap(lambda b: st.tuples(
    st.lists(st.integers(0, 70), min_size=b, max_size=b),
    st.lists(st.sampled_from([0, 1, 2, 15, 16, 17, 100, 255, 256, 257, 1000, 4096, 20000]), min_size=b, max_size=b)))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.sampled_from([1, 4, 16, 32]), st.sampled_from([16, 64, 128]), st.booleans(),
       st.sampled_from([1, 8, 132]), st.sampled_from([1, 8]), st.sampled_from(range(len(POLICIES))),
       st.sampled_from([None, 0, 1, 100, 512]), st.booleans())
def test_plan_properties(batch, tile_q, block_n, causal, num_cus, heads, policy, fixed, disable):
    qo_lens, kv_lens = (np.array(x, dtype=np.int64) for x in batch)
    if causal:  # causal prefill needs qo_len <= kv_len
        qo_lens = np.minimum(qo_lens, kv_lens)
    qo_indptr = np.concatenate([[0], np.cumsum(qo_lens)])
    kv_begin = np.concatenate([[0], np.cumsum(kv_lens)[:-1]])
    plan = plan_work(qo_indptr, kv_lens, kv_begin, tile_q, block_n, heads, num_cus, causal, POLICIES[policy],
                     disable_split_kv=disable, fixed_split_size=fixed)
    check_plan(plan, qo_lens, kv_lens, tile_q, block_n, causal, fixed if fixed else None)
    if not fixed:
        if disable:
            assert plan.chunk_size == 0
        else:
            bound = max_grid(len(kv_lens), int((-(-qo_lens // tile_q)).sum()), heads, num_cus, POLICIES[policy], causal)
            assert plan.num_items <= bound, "a CUDA-graph grid sized by max_grid would overflow"
            padded = plan_work(qo_indptr, kv_lens, kv_begin, tile_q, block_n, heads, num_cus, causal,
                               POLICIES[policy], pad_items=bound)
            check_plan(padded, qo_lens, kv_lens, tile_q, block_n, causal)


def test_chunks_are_balanced_and_fill_the_gpu():
    # One long request in a small batch: split into chunks of about the fair share.
    policy = SplitPolicy(2, 2, 256, 4)
    kv = np.array([131072], dtype=np.int64)
    plan = plan_work(np.array([0, 1]), kv, np.zeros(1, np.int64), 1, 128, 8, 132, False, policy)
    target = -(-2 * 132 // 8)
    assert plan.chunk_size > 0 and 0.9 * target <= plan.num_items <= target + 1
    # A batch that fills the GPU with even lengths is not split.
    kv = np.full(512, 4096, dtype=np.int64)
    plan = plan_work(np.arange(513), kv, np.zeros(512, np.int64), 1, 128, 8, 132, False, policy)
    assert plan.chunk_size == 0 and plan.num_items == 512
    # ... unless one request is many fair shares long (skew).
    kv[0] = 400000
    plan = plan_work(np.arange(513), kv, np.zeros(512, np.int64), 1, 128, 8, 132, False, policy)
    assert plan.chunk_size > 0


def test_choose_chunk_respects_minimum_and_skips_useless_splits():
    policy = SplitPolicy(2, 2, 256, 4)
    assert choose_chunk(0, 0, 1, 128, 8, 132, policy) == 0
    assert choose_chunk(200, 200, 8, 128, 8, 132, policy) == 0  # one minimum chunk would hold it all
    assert choose_chunk(4096, 4096, 8, 128, 8, 132, policy) == 256


def test_graph_padding_fields_and_overflow():
    policy = SplitPolicy(2, 2, 256, 4)
    kv = np.array([5, 9], dtype=np.int64)
    plan = plan_work(np.arange(3), kv, np.zeros(2, np.int64), 1, 16, 1, 4, False, policy, pad_items=10)
    assert plan.grid_items == 10 and all(plan.offsets[f][1] == 10 for f in ITEM_FIELDS)
    with pytest.raises(ValueError, match="CUDA graph"):
        plan_work(np.arange(3), kv, np.zeros(2, np.int64), 1, 16, 1, 4, False, policy, pad_items=1)


@pytest.mark.parametrize("split", [False, True])
def test_qo_begin_overrides_rows_not_lengths(split):
    """Head-major requests (block-sparse variable blocks): rows start where ``qo_begin`` says,
    lengths still come from ``qo_indptr``, on the fast path and on split plans."""
    policy = SplitPolicy(2, 2, 16, 4)
    qo_lens, kv_lens = np.array([3, 5, 2]), np.array([40, 0, 300]) if split else np.array([4, 0, 9])
    qo_begin = np.array([100, 7, 50])
    plan = plan_work(np.concatenate([[0], np.cumsum(qo_lens)]), kv_lens, np.zeros(3, np.int64), 8, 16, 1, 4, False,
                     policy, qo_begin=qo_begin)
    assert (plan.chunk_size > 0) == split
    f = unpack(plan)
    req = f["item_req"][: plan.num_items]
    assert (f["item_qo_begin"][: plan.num_items] == qo_begin[req]).all()
    assert (f["item_qo_len"][: plan.num_items] == qo_lens[req]).all()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from([0, 1, 2, 15, 16, 17, 100, 255, 256, 257, 1000, 4096, 20000]), min_size=1, max_size=40),
       st.sampled_from([1, 2, 4, 16]), st.sampled_from([0, 16, 64, 128, 1024]), st.booleans(), st.booleans())
def test_one_tile_items_match_the_general_path(kv_lens, tile_q, chunk, multi_row, heads_major):
    """Decode-shaped batches (each request one q tile) take ``_one_tile_items``: the same fields,
    partial rows and counters as the general path, split or not."""
    kv_lens = np.array(kv_lens, dtype=np.int64)
    batch = len(kv_lens)
    qo_lens = (np.arange(batch) % tile_q + 1) if multi_row else np.ones(batch, dtype=np.int64)
    qo_begin = np.arange(batch, dtype=np.int64) * 5 + 2 if heads_major else np.cumsum(qo_lens) - qo_lens
    kv_begin = np.cumsum(kv_lens) - kv_lens + 3
    fast = _one_tile_items(qo_begin, qo_lens, kv_begin, kv_lens, chunk)
    general = _tiled_items(qo_begin, qo_lens, kv_begin, kv_lens, np.ones(batch, dtype=np.int64), tile_q, chunk, False)
    assert fast[0].shape == general[0].shape and (fast[0] == general[0]).all()
    assert fast[1:] == general[1:]
