"""Cascade attention against the float64 reference over each request's concatenated KV, and beside
plain batch decode/prefill over the concatenated page tables: multi-level wrapper (2 and 3 levels,
decode and causal prefill queries), the legacy shared-prefix wrappers, split_shared_prefix, bad
inputs; GPU tier: bf16 at realistic sizes and CUDA-graph capture across re-plans."""

import math

import numpy as np
import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference.attention import attention_ref

WS_BYTES = gpu_or_cpu(16 << 20, 256 << 20)


def _workspace():
    return torch.empty(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _gen():
    return torch.Generator().manual_seed(torch.initial_seed())


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _indptr(lens):
    return [0] + np.cumsum(lens).astype(int).tolist()


def _tokens(cache, ids, n, layout):
    """K and V ``[n, H, D]`` of pages ``ids`` (in order) of a 5-D cache."""
    if not ids:
        shape = (0,) + ((cache.shape[3], cache.shape[4]) if layout == "NHD" else (cache.shape[2], cache.shape[4]))
        empty = torch.empty(shape, dtype=cache.dtype, device=cache.device)
        return empty, empty
    sel = cache[torch.tensor(ids, device=cache.device)]
    if layout == "HND":
        sel = sel.transpose(2, 3)
    h, d = sel.shape[-2], sel.shape[-1]
    return sel[:, 0].reshape(-1, h, d)[:n], sel[:, 1].reshape(-1, h, d)[:n]


def _float32_merge_factor(out_ref, out_low, lse_ref, n_levels):
    """float32 only: each merge weighs two states by exp2 of their float32 base-2 LSEs, each off
    by up to half an ulp (<= eps * |lse|), so the output gains up to ``2 ln2 eps max|lse|`` of
    relative error per merge, a floor that attention over the concatenated KV (either reference)
    does not have. Returns the ``assert_close_to_reference`` factor that adds this floor."""
    finite = torch.isfinite(lse_ref)
    if n_levels < 2 or not finite.any():
        return 2.0
    floor = (n_levels - 1) * 2 * math.log(2) * torch.finfo(torch.float32).eps * lse_ref[finite].abs().max().item()
    err_low = ((out_low.double() - out_ref).abs().max() / out_ref.abs().max().clamp(min=1e-30)).item()
    return 2.0 + floor / max(err_low, 1e-30)


class Cascade:
    """A batch whose KV is a stack of levels. ``group_sizes[i]`` lists how many consecutive requests
    share each segment of level i (the last level: one request per segment); ``seg_lens[i]`` the
    segments' KV lengths. Pages get random, non-contiguous ids in one cache (each shared page once)."""

    def __init__(self, group_sizes, seg_lens, qo_lens, page_size, hkv, d, dtype, gen, layout="NHD", total_pages=None):
        batch = len(qo_lens)
        pages = [[-(-n // page_size) for n in lens] for lens in seg_lens]
        total = max(sum(map(sum, pages)) + 3, total_pages or 0)
        perm = torch.randperm(total, generator=gen).tolist()
        shape = (total, 2, page_size, hkv, d) if layout == "NHD" else (total, 2, hkv, page_size, d)
        self.cache = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
        self.levels = ([], [], [], [])
        ks, vs = [[] for _ in range(batch)], [[] for _ in range(batch)]
        self.page_lists = [[] for _ in range(batch)]
        self.segments = [[] for _ in range(batch)]  # request b's (k, v) per level
        self.full_upper_pages = True
        cursor = 0
        for lvl, (sizes, lens, pgs) in enumerate(zip(group_sizes, seg_lens, pages)):
            assert sum(sizes) == batch and len(sizes) == len(lens)
            qo_ptr, kv_ptr, idx, last = [0], [0], [], []
            r = 0
            for size, n, np_ in zip(sizes, lens, pgs):
                ids = perm[cursor:cursor + np_]
                cursor += np_
                k, v = _tokens(self.cache, ids, n, layout)
                for b in range(r, r + size):
                    ks[b].append(k)
                    vs[b].append(v)
                    self.page_lists[b] += ids
                    self.segments[b].append((k, v))
                qo_ptr.append(qo_ptr[-1] + sum(qo_lens[r:r + size]))
                r += size
                idx += ids
                kv_ptr.append(len(idx))
                last.append(n - (np_ - 1) * page_size if np_ else 0)
                if lvl < len(seg_lens) - 1 and n % page_size:
                    self.full_upper_pages = False
            for arr, vals in zip(self.levels, (qo_ptr, kv_ptr, idx, last)):
                arr.append(_i32(vals))
        self.ks = [torch.cat(x) for x in ks]
        self.vs = [torch.cat(x) for x in vs]
        self.qo_lens = qo_lens
        self.page_size = page_size
        self.kv_lens = [k.shape[0] for k in self.ks]

    def flat_tables(self):
        """The plain page table of each request: its levels' pages concatenated (upper levels full)."""
        assert self.full_upper_pages
        ps = self.page_size
        indptr = _indptr([len(p) for p in self.page_lists])
        last = [n - (len(p) - 1) * ps if p else 0 for n, p in zip(self.kv_lens, self.page_lists)]
        return _i32(_indptr(self.qo_lens)), _i32(indptr), _i32(sum(self.page_lists, [])), _i32(last)

    def check(self, out, lse, q, dtype, name="", n_levels=None, **opts):
        """Every request's rows against the float64 reference over its concatenated KV (and its
        low-precision twin). ``n_levels``: the merges that produced ``out`` (default: this batch's
        levels; 1 for a plain wrapper)."""
        n_levels = len(self.segments[0]) if n_levels is None else n_levels
        start = 0
        for b, n in enumerate(self.qo_lens):
            rows = slice(start, start + n)
            start += n
            if n == 0:
                continue
            ref, ref_lse = attention_ref(q[rows], self.ks[b], self.vs[b], **opts)
            low, low_lse = attention_ref(q[rows], self.ks[b], self.vs[b], compute_dtype=dtype, **opts)
            factor = 2.0
            if out.dtype == torch.float32 and n_levels > 1:
                factor = _float32_merge_factor(ref, low, ref_lse, n_levels)
            assert_close_to_reference(out[rows], ref, low, name=f"{name}out[request {b}]", factor=factor)
            if lse is not None:
                assert_close_to_reference(lse[rows], ref_lse, low_lse, name=f"{name}lse[request {b}]")


# ---------------------------------------------------------------------------------------------- 2 levels, decode

@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("layout,page_size,hq,hkv,d,upper_partial", [
    pytest.param("NHD", 16, 8, 2, 64, False, id="nhd-p16-g4-d64"),
    pytest.param("HND", 5, 6, 1, 96, False, id="hnd-p5-mqa6-d96"),
    pytest.param("NHD", 4, 4, 4, 64, True, id="nhd-p4-mha-partial-prefix-page"),
])
def test_two_level_decode_matches_reference_and_plain_decode(dtype, layout, page_size, hq, hkv, d, upper_partial):
    gen = _gen()
    batch = gpu_or_cpu(5, 48)
    prefix = gpu_or_cpu(7, 250) * page_size + (3 if upper_partial else 0)
    unique = [1, page_size, page_size + 1] + torch.randint(1, gpu_or_cpu(40, 700), (batch - 3,), generator=gen).tolist()
    c = Cascade([[batch], [1] * batch], [[prefix], unique], [1] * batch, page_size, hkv, d, dtype, gen, layout)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), kv_layout=layout)
    w.plan(*c.levels, hq, hkv, d, page_size, q_data_type=dtype)
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = poisoned((batch, hq, d), dtype), poisoned((batch, hq), torch.float32)
    got, got_lse = w.run(q, c.cache, out=out, lse=lse)
    assert got is out and got_lse is lse
    c.check(out, lse, q, dtype, name="cascade ")
    # Another layer: same plan, fresh q, out allocated, LSE through return_lse.
    q2 = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out2, lse2 = w.run(q2, c.cache, return_lse=True)
    c.check(out2, lse2, q2, dtype, name="second run ")
    assert isinstance(w.run(q2, c.cache), torch.Tensor)
    if not upper_partial:
        # Plain batch decode over each request's concatenated pages agrees with the same reference.
        _, indptr, indices, last = c.flat_tables()
        plain = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), kv_layout=layout)
        plain.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
        p_out, p_lse = plain.run(q, c.cache, return_lse=True)
        c.check(p_out, p_lse, q, dtype, name="plain decode ", n_levels=1)


def test_soft_cap_and_sm_scale_apply_at_every_level():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    batch, page_size, hq, hkv, d = 4, 8, 8, 2, 64
    c = Cascade([[batch], [1] * batch], [[3 * page_size], [9, 1, 20, 8]], [1] * batch, page_size, hkv, d, dtype, gen)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace())
    w.plan(*c.levels, hq, hkv, d, page_size, logits_soft_cap=5.0, sm_scale=0.7, q_data_type=dtype)
    q = (3 * torch.randn(batch, hq, d, generator=gen)).to(dtype).to(DEVICE)
    out, lse = w.run(q, c.cache, return_lse=True)
    c.check(out, lse, q, dtype, logits_soft_cap=5.0, sm_scale=0.7)


# ---------------------------------------------------------------------------------------------- 3 levels, prefill

@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "noncausal"])
def test_three_level_prefill_matches_reference_and_plain_prefill(dtype, causal):
    gen = _gen()
    page_size, hq, hkv, d = 4, 8, 2, 64
    # 6 requests: level 0 shared by all; level 1 groups of 2, 3 (no pages: an empty state) and 1;
    # level 2 unique, odd lengths, last pages partly full, one request with no queries.
    qo_lens = gpu_or_cpu([3, 1, 0, 7, 2, 5], [300, 1, 0, 777, 64, 129])
    unique = gpu_or_cpu([5, 1, 6, 9, 4, 13], [301, 17, 90, 1000, 65, 129])
    group = gpu_or_cpu([3 * page_size, 0, 2 * page_size], [100 * page_size, 0, 37 * page_size])
    prefix = gpu_or_cpu(5, 300) * page_size
    c = Cascade([[6], [2, 3, 1], [1] * 6], [[prefix], group, unique], qo_lens, page_size, hkv, d, dtype, gen)
    n = sum(qo_lens)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(3, _workspace())
    w.plan(*c.levels, hq, hkv, d, page_size, causal=causal, q_data_type=dtype)
    q = torch.randn(n, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = poisoned((n, hq, d), dtype), poisoned((n, hq), torch.float32)
    w.run(q, c.cache, out=out, lse=lse)
    c.check(out, lse, q, dtype, causal=causal, name="cascade ")
    qo_indptr, indptr, indices, last = c.flat_tables()
    plain = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())
    plain.plan(qo_indptr, indptr, indices, last, hq, hkv, d, page_size, causal=causal, q_data_type=dtype)
    p_out, p_lse = plain.run(q, c.cache, return_lse=True)
    c.check(p_out, p_lse, q, dtype, causal=causal, name="plain prefill ", n_levels=1)


def test_one_level_is_plain_batch_prefill():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    page_size, hq, hkv, d = 4, 4, 2, 64
    c = Cascade([[1, 1, 1]], [[9, 16, 2]], [2, 5, 1], page_size, hkv, d, dtype, gen)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(1, _workspace())
    w.plan(*c.levels, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    q = torch.randn(8, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, c.cache, return_lse=True)
    c.check(out, lse, q, dtype, causal=True)


def test_level0_plan_splits_long_shared_kv_and_uses_prefill_tiles():
    """Plan only: the one-request level 0 is cut into KV chunks spread over the GPU, with the
    many-row block shape (tiles of several queries), while the decode level keeps the decode shape."""
    from flashinfer_triton.attention.device import device_info

    batch, page_size, hq, hkv, d = 8, 16, 32, 8, 128  # one tile of level-0 rows: too few programs alone
    prefix_pages = 512  # 8192 tokens
    levels = (
        [_i32([0, batch]), _i32(list(range(batch + 1)))],
        [_i32([0, prefix_pages]), _i32([i * 4 for i in range(batch + 1)])],
        [_i32(list(range(prefix_pages))), _i32(list(range(prefix_pages, prefix_pages + 4 * batch)))],
        [_i32([page_size]), _i32([7] * batch)],
    )
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE))
    w.plan(*levels, hq, hkv, d, page_size, q_data_type=torch.float16)
    lvl0, lvl1 = (lw.planned for lw in w._batch_prefill_wrappers)
    assert not lvl0.cfg.decode, "level 0 should use the many-row prefill tiles"
    tiles = -(-batch // (lvl0.cfg.block_m // (hq // hkv)))
    assert lvl0.plan.chunk_size > 0 and lvl0.plan.num_items >= 4 * tiles, "level 0's long KV must be split"
    assert lvl0.plan.num_items * hkv >= device_info(DEVICE).compute_units, "level 0 should fill the GPU"
    assert lvl1.cfg.decode, "the per-request level keeps the decode block shape"


# ---------------------------------------------------------------------------------------------- CUDA-graph mode

def test_cuda_graph_mode_fixed_buffers_across_replans():
    """use_cuda_graph=True without a capture (runs on the CPU tier too): per-level fixed buffers,
    later plans with other lengths and no more rows stay exact."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    batch, page_size, hq, hkv, d = 4, 4, 8, 2, 64
    bufs = ([torch.zeros(2, dtype=torch.int32, device=DEVICE), torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE)],
            [torch.zeros(2, dtype=torch.int32, device=DEVICE), torch.zeros(batch + 1, dtype=torch.int32, device=DEVICE)],
            [torch.zeros(256, dtype=torch.int32, device=DEVICE), torch.zeros(256, dtype=torch.int32, device=DEVICE)],
            [torch.zeros(1, dtype=torch.int32, device=DEVICE), torch.zeros(batch, dtype=torch.int32, device=DEVICE)])
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), use_cuda_graph=True, qo_indptr_buf_arr=bufs[0],
                                                     paged_kv_indptr_buf_arr=bufs[1], paged_kv_indices_buf_arr=bufs[2],
                                                     paged_kv_last_page_len_buf_arr=bufs[3])
    assert w.is_cuda_graph_enabled
    for prefix, unique, qo_lens in ((8 * page_size, [9, 2, 30, 5], [3, 1, 2, 2]),
                                    (2 * page_size, [40, 1, 3, 17], [1, 1, 1, 1]),
                                    (0, [5, 6, 7, 8], [2, 1, 1, 4])):
        c = Cascade([[batch], [1] * batch], [[prefix], unique], qo_lens, page_size, hkv, d, dtype, gen)
        w.plan(*c.levels, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
        q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
        out, lse = w.run(q, c.cache, return_lse=True)
        c.check(out, lse, q, dtype, causal=True)
    with pytest.raises(ValueError, match="qo_indptr"):
        c = Cascade([[batch], [1] * batch], [[page_size], [9, 9, 9, 9]], [3, 3, 3, 3], page_size, hkv, d, dtype, gen)
        w.plan(*c.levels, hq, hkv, d, page_size, q_data_type=dtype)


# ---------------------------------------------------------------------------------------------- legacy wrappers

@pytest.mark.parametrize("layout", ["NHD", "HND"])
def test_legacy_shared_prefix_decode(layout):
    dtype = LOW_DTYPES[0]
    gen = _gen()
    batch, page_size, hq, hkv, d, prefix = 4, 4, 8, 2, 64, gpu_or_cpu(37, 3000)
    c = Cascade([[1] * batch], [[7, 1, 12, 4]], [1] * batch, page_size, hkv, d, dtype, gen, layout)
    k_shared = torch.randn(prefix, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v_shared = torch.randn(prefix, hkv, d, generator=gen).to(dtype).to(DEVICE)
    to_layout = (lambda x: x) if layout == "NHD" else (lambda x: x.transpose(0, 1).contiguous())  # noqa: E731
    w = flashinfer.BatchDecodeWithSharedPrefixPagedKVCacheWrapper(_workspace(), layout)
    _, indptr, indices, last = c.levels[0][0], c.levels[1][0], c.levels[2][0], c.levels[3][0]
    w.begin_forward(indptr, indices, last, hq, hkv, d, page_size, data_type=dtype)
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out = w.forward(q, to_layout(k_shared), to_layout(v_shared), c.cache)
    for b in range(batch):
        k = torch.cat([k_shared, c.ks[b]])
        v = torch.cat([v_shared, c.vs[b]])
        ref, _ = attention_ref(q[b:b + 1], k, v)
        low, _ = attention_ref(q[b:b + 1], k, v, compute_dtype=dtype)
        assert_close_to_reference(out[b:b + 1], ref, low, name=f"out[{b}]")


def test_legacy_shared_prefix_prefill_causal_and_replan():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    page_size, hq, hkv, d, prefix = 4, 8, 2, 64, gpu_or_cpu(29, 2000)
    qo_lens, unique = [3, 1, 6], [5, 1, 13]
    c = Cascade([[1, 1, 1]], [unique], qo_lens, page_size, hkv, d, dtype, gen)
    k_shared = torch.randn(prefix, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v_shared = torch.randn(prefix, hkv, d, generator=gen).to(dtype).to(DEVICE)
    w = flashinfer.BatchPrefillWithSharedPrefixPagedKVCacheWrapper(_workspace())
    w.begin_forward(*(lv[0] for lv in c.levels), hq, hkv, d, page_size)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    for causal, sm_scale in ((True, None), (False, 0.3)):
        out = w.forward(q, k_shared, v_shared, c.cache, causal=causal, sm_scale=sm_scale)
        start = 0
        for b, n in enumerate(qo_lens):
            rows = slice(start, start + n)
            start += n
            k = torch.cat([k_shared, c.ks[b]])
            v = torch.cat([v_shared, c.vs[b]])
            ref, _ = attention_ref(q[rows], k, v, causal=causal, sm_scale=sm_scale)
            low, _ = attention_ref(q[rows], k, v, causal=causal, sm_scale=sm_scale, compute_dtype=dtype)
            assert_close_to_reference(out[rows], ref, low, name=f"causal={causal} out[request {b}]")


# ---------------------------------------------------------------------------------------------- split_shared_prefix

def _flat(page_lists, kv_lens, page_size):
    indptr = _indptr([len(p) for p in page_lists])
    last = [n - (len(p) - 1) * page_size if p else 0 for n, p in zip(kv_lens, page_lists)]
    return _i32(indptr), _i32(sum(page_lists, [])), _i32(last)


def test_split_shared_prefix_finds_the_shared_run_and_runs_exactly():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    page_size, hq, hkv, d = 4, 8, 2, 64
    num_pages = 40
    shape = (num_pages, 2, page_size, hkv, d)
    cache = torch.randn(shape, generator=gen).to(dtype).to(DEVICE)
    perm = torch.randperm(num_pages, generator=gen).tolist()
    shared, rest = perm[:5], perm[5:]
    # Request 2 diverges after 4 shared pages: the run stops there for everyone.
    page_lists = [shared + rest[0:3], shared + rest[3:4], shared[:4] + rest[4:7], shared + rest[7:9]]
    kv_lens = [7 * page_size + 1, 5 * page_size + 2, 6 * page_size + 3, 7 * page_size]
    indptr, indices, last = _flat(page_lists, kv_lens, page_size)
    levels = flashinfer.split_shared_prefix(indptr, indices, last, page_size)
    assert levels.num_shared_pages == 4
    assert levels.paged_kv_indices_arr[0].tolist() == shared[:4]
    assert levels.qo_indptr_arr[0].tolist() == [0, 4] and levels.qo_indptr_arr[1].tolist() == [0, 1, 2, 3, 4]
    assert levels.paged_kv_last_page_len_arr[0].tolist() == [page_size]
    assert levels.paged_kv_indptr_arr[1].tolist() == _indptr([len(p) - 4 for p in page_lists])
    assert levels.paged_kv_indices_arr[1].tolist() == sum((p[4:] for p in page_lists), [])
    assert levels.paged_kv_last_page_len_arr[1].tolist() == last.tolist()
    assert all(t.dtype == torch.int32 for lv in levels for t in lv)
    # The levels run and match attention over each request's full KV.
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace())
    w.plan(*levels, hq, hkv, d, page_size, q_data_type=dtype)
    q = torch.randn(4, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, cache, return_lse=True)
    for b in range(4):
        k, v = _tokens(cache, page_lists[b], kv_lens[b], "NHD")
        ref, ref_lse = attention_ref(q[b:b + 1], k, v)
        low, low_lse = attention_ref(q[b:b + 1], k, v, compute_dtype=dtype)
        assert_close_to_reference(out[b:b + 1], ref, low, name=f"out[{b}]")
        assert_close_to_reference(lse[b:b + 1], ref_lse, low_lse, name=f"lse[{b}]")


def test_split_shared_prefix_keeps_query_tokens_and_partial_pages_out():
    page_size = 4
    shared = [10, 11, 12, 13]
    # All four pages shared by id, but request 1 ends inside page 13 (partly full): not shareable.
    indptr, indices, last = _flat([shared + [20], shared], [17, 15], page_size)
    assert flashinfer.split_shared_prefix(indptr, indices, last, page_size).num_shared_pages == 3
    # A request whose KV ends exactly at a page boundary keeps its decode token's page.
    indptr, indices, last = _flat([shared + [20], shared], [17, 16], page_size)
    assert flashinfer.split_shared_prefix(indptr, indices, last, page_size).num_shared_pages == 3
    # Queries: request 0's 6 query tokens reach back into page 12, so the prefix stops before it.
    indptr, indices, last = _flat([shared + [20, 21], shared + [22]], [24, 20], page_size)
    qo = _i32([0, 6, 7])
    levels = flashinfer.split_shared_prefix(indptr, indices, last, page_size, qo_indptr=qo)
    assert levels.num_shared_pages == 4 and levels.qo_indptr_arr[0].tolist() == [0, 7]
    levels = flashinfer.split_shared_prefix(indptr, indices, last, page_size, qo_indptr=_i32([0, 9, 10]))
    assert levels.num_shared_pages == 3
    assert levels.paged_kv_indptr_arr[1].tolist() == [0, 3, 5]


def test_split_shared_prefix_handles_no_sharing():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    page_size, hq, hkv, d = 4, 4, 2, 64
    cache = torch.randn(12, 2, page_size, hkv, d, generator=gen).to(dtype).to(DEVICE)
    page_lists, kv_lens = [[0, 1, 2], [3, 1, 2], []], [12, 10, 0]
    indptr, indices, last = _flat(page_lists, kv_lens, page_size)
    levels = flashinfer.split_shared_prefix(indptr, indices, last, page_size)
    assert levels.num_shared_pages == 0
    assert levels.paged_kv_indptr_arr[0].tolist() == [0, 0] and levels.paged_kv_last_page_len_arr[0].tolist() == [0]
    assert levels.paged_kv_indices_arr[1].tolist() == indices.tolist()
    # One request: nothing to share.
    one = flashinfer.split_shared_prefix(_i32([0, 3]), _i32([0, 1, 2]), _i32([4]), page_size)
    assert one.num_shared_pages == 0
    # The empty level 0 merges as an empty state: the cascade equals attention over the request's KV.
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace())
    w.plan(*levels[:2], levels[2], levels[3], hq, hkv, d, page_size, q_data_type=dtype)
    q = torch.randn(3, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, cache, out=poisoned((3, hq, d), dtype), return_lse=True)
    for b in range(2):
        k, v = _tokens(cache, page_lists[b], kv_lens[b], "NHD")
        ref, ref_lse = attention_ref(q[b:b + 1], k, v)
        low, low_lse = attention_ref(q[b:b + 1], k, v, compute_dtype=dtype)
        assert_close_to_reference(out[b:b + 1], ref, low, name=f"out[{b}]")
        assert_close_to_reference(lse[b:b + 1], ref_lse, low_lse, name=f"lse[{b}]")
    assert torch.equal(out[2].float(), torch.zeros_like(out[2].float())) and torch.isneginf(lse[2]).all()


# ---------------------------------------------------------------------------------------------- errors

def test_bad_inputs_raise_clear_errors():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    page_size, hq, hkv, d = 4, 4, 2, 64
    c = Cascade([[3], [1, 1, 1]], [[8], [3, 5, 4]], [1, 1, 1], page_size, hkv, d, dtype, gen)
    qo, indptr, indices, last = c.levels
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace())
    q = torch.randn(3, hq, d, generator=gen).to(dtype).to(DEVICE)
    with pytest.raises(RuntimeError, match="plan"):
        w.run(q, c.cache)
    with pytest.raises(ValueError, match="num_levels"):
        flashinfer.MultiLevelCascadeAttentionWrapper(0, _workspace())
    with pytest.raises(TypeError, match="num_levels"):
        flashinfer.MultiLevelCascadeAttentionWrapper(2.0, _workspace())
    with pytest.raises(ValueError, match="kv_layout"):
        flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), kv_layout="NDH")
    with pytest.raises(ValueError, match="qo_indptr_buf_arr"):
        flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), use_cuda_graph=True)
    with pytest.raises(ValueError, match=r"paged_kv_indices_buf_arr: expected 2 entries \(num_levels\)"):
        flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), use_cuda_graph=True, qo_indptr_buf_arr=qo,
                                                     paged_kv_indptr_buf_arr=indptr, paged_kv_indices_buf_arr=indices[:1],
                                                     paged_kv_last_page_len_buf_arr=last)
    with pytest.raises(ValueError, match=r"qo_indptr_arr: expected 2 entries \(num_levels\)"):
        w.plan(qo[:1], indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match=r"paged_kv_last_page_len: expected 2 entries"):
        w.plan(qo, indptr, indices, last + last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(TypeError, match=r"paged_kv_indptr_arr: expected a list"):
        w.plan(qo, indptr[0], indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(TypeError, match=r"paged_kv_indices_arr\[1\]: expected dtype int32"):
        w.plan(qo, indptr, [indices[0], indices[1].long()], last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match=r"paged_kv_indptr_arr\[1\]: expected 4 entries"):
        w.plan(qo, [indptr[0], indptr[1][:3]], indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match=r"paged_kv_last_page_len\[0\]: expected 1 entries"):
        w.plan(qo, indptr, indices, [last[1], last[1]], hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match=r"qo_indptr_arr\[1\]: its last entry \(4 query rows\)"):
        w.plan(qo[:1] + [_i32([0, 1, 2, 4])], indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="level 1: paged_kv_last_page_len"):
        w.plan(qo, indptr, indices, [last[0], last[1] + page_size], hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(NotImplementedError, match="pos_encoding_mode"):
        w.plan(qo, indptr, indices, last, hq, hkv, d, page_size, pos_encoding_mode="ROPE_LLAMA", q_data_type=dtype)
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        w.plan(qo, indptr, indices, last, hq, hkv, d, page_size, pos_encoding_mode="ROPE", q_data_type=dtype)
    with pytest.raises(NotImplementedError, match="window_left"):
        w.plan(qo, indptr, indices, last, hq, hkv, d, page_size, window_left=8, q_data_type=dtype)
    with pytest.raises(NotImplementedError, match="use_fp16_qk_reduction"):
        w.plan(qo, indptr, indices, last, hq, hkv, d, page_size, use_fp16_qk_reduction=True, q_data_type=dtype)
    with pytest.raises(ValueError, match="num_qo_heads"):
        w.plan(qo, indptr, indices, last, 3, hkv, d, page_size, q_data_type=dtype)
    # Page ids on the device are range-checked in checked mode (FlashInfer checks none).
    with flashinfer.checked():
        w.plan(qo, indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    with pytest.raises(ValueError, match="q: expected shape"):
        w.run(q[:2], c.cache)
    with pytest.raises(TypeError, match="q: expected dtype"):
        w.run(q.double(), c.cache)
    with pytest.raises(ValueError, match="out of range"):
        w.run(q, c.cache[:2])
    with pytest.raises(ValueError, match="out: expected shape"):
        w.run(q, c.cache, out=torch.empty(3, hq, 32, dtype=dtype, device=DEVICE))
    with pytest.raises(ValueError, match="lse"):
        w.run(q, c.cache, lse=torch.empty(3, hq + 1, dtype=torch.float32, device=DEVICE))
    with pytest.raises(TypeError):
        w.run(q, c.cache, None)  # out/lse/return_lse are keyword-only
    # split_shared_prefix
    with pytest.raises(TypeError, match="paged_kv_indices"):
        flashinfer.split_shared_prefix(indptr[1], indices[1].long(), last[1], page_size)
    with pytest.raises(ValueError, match="paged_kv_last_page_len"):
        flashinfer.split_shared_prefix(indptr[1], indices[1], last[1][:2], page_size)
    with pytest.raises(ValueError, match="page_size"):
        flashinfer.split_shared_prefix(indptr[1], indices[1], last[1], 0)
    with pytest.raises(ValueError, match="qo_indptr: expected a non-decreasing"):
        flashinfer.split_shared_prefix(indptr[1], indices[1], last[1], page_size, qo_indptr=_i32([0, 4, 3, 6]))
    with pytest.raises(ValueError, match="qo_indptr: expected 4 entries"):
        flashinfer.split_shared_prefix(indptr[1], indices[1], last[1], page_size, qo_indptr=_i32([0, 4]))
    # legacy wrappers
    lw = flashinfer.BatchPrefillWithSharedPrefixPagedKVCacheWrapper(_workspace())
    with pytest.raises(RuntimeError, match="begin_forward"):
        lw.forward(q, q, q, c.cache)
    dw = flashinfer.BatchDecodeWithSharedPrefixPagedKVCacheWrapper(_workspace())
    with pytest.raises(RuntimeError, match="begin_forward"):
        dw.forward(q, q, q, c.cache)


# ---------------------------------------------------------------------------------------------- GPU tier

def _shared_prefix_batch(batch, prefix, suffixes, page_size, hkv, d, dtype, gen, total_pages=None):
    return Cascade([[batch], [1] * batch], [[prefix], suffixes], [1] * batch, page_size, hkv, d, dtype, gen,
                   total_pages=total_pages)


@requires_gpu
def test_gpu_realistic_bf16_decode_64x4096():
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(5)
    batch, page_size, hq, hkv, d = 64, 16, 32, 8, 128
    c = _shared_prefix_batch(batch, 4096, [100] * (batch - 2) + [1, 16], page_size, hkv, d, dtype, gen)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace())
    w.plan(*c.levels, hq, hkv, d, page_size, q_data_type=dtype)
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, c.cache, out=poisoned((batch, hq, d), dtype), lse=poisoned((batch, hq), torch.float32))
    c.check(out, lse, q, dtype)
    _, indptr, indices, last = c.flat_tables()
    plain = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    plain.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
    torch.testing.assert_close(out, plain.run(q, c.cache), atol=2e-2, rtol=2e-2)


@requires_gpu
def test_gpu_realistic_bf16_prefill_causal():
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(6)
    batch, page_size, hq, hkv, d = 16, 16, 32, 8, 128
    qo_lens = [128] * (batch - 2) + [1, 77]
    c = Cascade([[batch], [1] * batch], [[4096], [256] * (batch - 1) + [77]], qo_lens, page_size, hkv, d, dtype, gen)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace())
    w.plan(*c.levels, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, c.cache, return_lse=True)
    c.check(out, lse, q, dtype, causal=True)


@requires_gpu
def test_gpu_cuda_graph_capture_and_replay_across_replans():
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(7)
    batch, page_size, hq, hkv, d = 32, 16, 32, 8, 128
    i32 = lambda n: torch.zeros(n, dtype=torch.int32, device=DEVICE)  # noqa: E731
    w = flashinfer.MultiLevelCascadeAttentionWrapper(
        2, _workspace(), use_cuda_graph=True, qo_indptr_buf_arr=[i32(2), i32(batch + 1)],
        paged_kv_indptr_buf_arr=[i32(2), i32(batch + 1)], paged_kv_indices_buf_arr=[i32(4096), i32(8192)],
        paged_kv_last_page_len_buf_arr=[i32(1), i32(batch)])
    total_pages = 4200  # one cache object for the captured graph; every later batch fits in it
    c = _shared_prefix_batch(batch, 2048, [100] * batch, page_size, hkv, d, dtype, gen, total_pages)
    w.plan(*c.levels, hq, hkv, d, page_size, q_data_type=dtype)
    cache = c.cache
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out = torch.empty(batch, hq, d, dtype=dtype, device=DEVICE)
    lse = torch.empty(batch, hq, dtype=torch.float32, device=DEVICE)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        w.run(q, cache, out=out, lse=lse)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, cache, out=out, lse=lse)
    for prefix, suffixes in ((16 * 1000, [1] * batch), (0, [2000] * batch),
                             (16 * 37, torch.randint(1, 2000, (batch,), generator=gen).tolist())):
        c = _shared_prefix_batch(batch, prefix, suffixes, page_size, hkv, d, dtype, gen, total_pages)
        assert c.cache.shape == cache.shape
        cache.copy_(c.cache)
        w.plan(*c.levels, hq, hkv, d, page_size, q_data_type=dtype)
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        c.check(out, lse, q, dtype, name=f"replay prefix {prefix} ")
