"""Block-sparse attention (BSR and variable blocks) against the float64 dense reference with the
expanded mask: block shapes 1x1 to 64x64, partial row blocks, causal, masks inside blocks, empty and
fully masked rows, GQA, split-KV; CUDA graphs and torch.compile on the GPU tier."""

import numpy as np
import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference.attention import attention_ref
from tests.reference.sparse import bsr_dense_mask, variable_dense_mask

WS_BYTES = gpu_or_cpu(16 << 20, 256 << 20)


def _workspace():
    return torch.empty(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _gen():
    return torch.Generator().manual_seed(torch.initial_seed())


def _randn(gen, dtype, *shape):
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _random_bsr(num_rows, num_cols, density, gen, empty=(), lower=False):
    """Sorted block columns per row block (``lower``: only j <= b, ending with the diagonal block)."""
    rows = []
    for b in range(num_rows):
        width = min(b + 1, num_cols) if lower else num_cols
        cols = [] if b in empty else (torch.rand(width, generator=gen) < density).nonzero().flatten().tolist()
        if lower and b not in empty and b < num_cols and b not in cols:
            cols.append(b)
        rows.append(sorted(cols))
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return indptr.tolist(), [c for r in rows for c in r]


def _check(out, lse, q, k, v, dense_mask, dtype, **opts):
    ref, ref_lse = attention_ref(q, k, v, custom_mask=dense_mask.to(q.device), **opts)
    low, low_lse = attention_ref(q, k, v, custom_mask=dense_mask.to(q.device), compute_dtype=dtype, **opts)
    assert_close_to_reference(out, ref, low, name="out")
    if lse is not None:
        assert_close_to_reference(lse, ref_lse, low_lse, name="lse")


BSR_CASES = [
    # (R, C, M, N, num_qo_heads, num_kv_heads, head_dim, density, causal, inner mask, empty row blocks)
    pytest.param(1, 1, 9, 13, 4, 2, 64, 0.4, False, True, (2,), id="1x1-mask-gqa2"),
    pytest.param(16, 1, 37, 29, 4, 1, 64, 0.5, True, False, (1,), id="16x1-causal-mqa4-M-partial"),
    pytest.param(16, 16, 45, 64, 2, 2, 128, 0.6, False, True, (0,), id="16x16-mask-d128"),
    pytest.param(64, 64, 100, 192, 8, 2, 64, 0.7, True, False, (), id="64x64-causal-g4-M-partial"),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("R,C,M,N,hq,hkv,d,density,causal,inner,empty", BSR_CASES)
def test_bsr_matches_dense_reference(dtype, R, C, M, N, hq, hkv, d, density, causal, inner, empty):
    gen = _gen()
    scale = gpu_or_cpu(1, 8)
    M, N = M * scale, N * scale
    num_rows, num_cols = -(-M // R), N // C
    indptr, indices = _random_bsr(num_rows, num_cols, density, gen, empty)
    nnz = len(indices)
    mask = (torch.rand(nnz, R, C, generator=gen) < 0.6) if inner else None
    if inner:
        first = next(b for b in range(num_rows) if indptr[b + 1] > indptr[b])
        mask[indptr[first]:indptr[first + 1], 0, :] = False  # a fully masked row
    q = _randn(gen, dtype, M, hq, d)
    k = _randn(gen, dtype, N, hkv, d)
    v = _randn(gen, dtype, N, hkv, d)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace())
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, mask=None if mask is None else mask.to(DEVICE),
           causal=causal, q_data_type=dtype, o_data_type=dtype)
    out, lse = poisoned((M, hq, d), dtype), poisoned((M, hq), torch.float32)
    w.run(q, k, v, out=out, lse=lse)
    dense = bsr_dense_mask(indptr, indices, M, N, R, C, block_mask=mask, causal=causal)
    _check(out, lse, q, k, v, dense, dtype)
    for b in empty:  # rows with no key: zeros and LSE -inf (FlashInfer's convention)
        rows = slice(b * R, min((b + 1) * R, M))
        assert (out[rows] == 0).all() and torch.isneginf(lse[rows]).all()


def test_bsr_causal_is_sequence_causal_for_sorted_lower_rows():
    """Square blocks j <= b listed in order, ending with the diagonal: causal in the list is causal
    over the sequence (checked against the reference's own causal mask, not the list semantics)."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    R = C = 16
    M = N = gpu_or_cpu(80, 1024)
    hq, hkv, d = 4, 2, 64
    indptr, indices = _random_bsr(M // R, N // C, 0.5, gen, lower=True)
    q, k, v = _randn(gen, dtype, M, hq, d), _randn(gen, dtype, N, hkv, d), _randn(gen, dtype, N, hkv, d)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace())
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, causal=True, q_data_type=dtype, o_data_type=dtype)
    out, lse = w.run(q, k, v, return_lse=True)
    blocks = bsr_dense_mask(indptr, indices, M, N, R, C)
    _check(out, lse, q, k, v, blocks, dtype, causal=True)


def test_bsr_packed_mask_soft_cap_and_split_kv():
    """Long rows split across programs (and merged); a packed mask (packed here with numpy, per row
    block) equals the boolean one; soft cap and sm_scale pass through."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    R, C = 4, 16
    M, N = 18, gpu_or_cpu(640, 8192)
    hq, hkv, d = 2, 1, 64
    indptr, indices = _random_bsr(-(-M // R), N // C, 0.9, gen)
    mask = torch.rand(len(indices), R, C, generator=gen) < 0.8
    q, k, v = _randn(gen, dtype, M, hq, d), _randn(gen, dtype, N, hkv, d), _randn(gen, dtype, N, hkv, d)
    opts = dict(logits_soft_cap=8.0, sm_scale=0.2, q_data_type=dtype, o_data_type=dtype)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace())
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, mask=mask.to(DEVICE), **opts)
    assert w.planned.plan.num_split_requests > 0, "expected the long rows to be split"
    out, lse = w.run(q, k, v, return_lse=True)
    _check(out, lse, q, k, v, bsr_dense_mask(indptr, indices, M, N, R, C, block_mask=mask), dtype,
           logits_soft_cap=8.0, sm_scale=0.2)
    # FlashInfer's flattened layout, row block by row block (the last one cut to its rows), packed.
    parts = []
    for b in range(len(indptr) - 1):
        rows = min(R, M - b * R)
        seg = mask[indptr[b]:indptr[b + 1]].transpose(0, 1).reshape(R, -1)[:rows]
        parts.append(np.packbits(seg.numpy().reshape(-1), bitorder="little"))
    packed = torch.from_numpy(np.concatenate(parts)).to(DEVICE)
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, packed_mask=packed, **opts)
    out2, lse2 = w.run(q, k, v, return_lse=True)
    assert torch.equal(out2, out) and torch.equal(lse2, lse)


def test_convert_bsr_mask_layout_matches_flashinfer_loop():
    gen = _gen()
    indptr = torch.tensor([0, 2, 2, 5])
    mask = torch.rand(5, 3, 4, generator=gen) < 0.5
    got = flashinfer.sparse.convert_bsr_mask_layout(mask, indptr)
    expect = torch.cat([mask[indptr[i]:indptr[i + 1]].transpose(0, 1).reshape(-1) for i in range(3)])
    assert torch.equal(got, expect)


def _random_partition(total, parts, gen, multiple=1):
    cuts = sorted(torch.randperm(total // multiple - 1, generator=gen)[: parts - 1].add(1).tolist())
    return [multiple * (b - a) for a, b in zip([0] + cuts, cuts + [total // multiple])]


VARIABLE_CASES = [
    # (num_kv_heads, group, qo_len, kv_len, row blocks, column blocks, column size multiple, causal)
    pytest.param(3, 2, 37, 45, 4, 5, 1, False, id="g2-token-pages"),
    pytest.param(2, 4, 30, 48, 3, 4, 4, True, id="g4-causal-page4"),
]


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("hkv,group,qo_len,kv_len,n_rows,n_cols,multiple,causal", VARIABLE_CASES)
def test_variable_matches_dense_reference(dtype, hkv, group, qo_len, kv_len, n_rows, n_cols, multiple, causal):
    gen = _gen()
    scale = gpu_or_cpu(1, 16)
    qo_len, kv_len = qo_len * scale, kv_len * scale
    hq, d = hkv * group, 64
    row_sz = torch.tensor([_random_partition(qo_len, n_rows, gen) for _ in range(hkv)], dtype=torch.int32)
    col_sz = torch.tensor([_random_partition(kv_len, n_cols, gen, multiple) for _ in range(hkv)], dtype=torch.int32)
    block_mask = torch.rand(hkv, n_rows, n_cols, generator=gen) < 0.5
    block_mask[0, 1] = False  # an empty row block
    q = _randn(gen, dtype, hq, qo_len, d)
    k = _randn(gen, dtype, hkv, kv_len, d)
    v = _randn(gen, dtype, hkv, kv_len, d)
    w = flashinfer.VariableBlockSparseAttentionWrapper(_workspace())
    w.plan(block_mask.to(DEVICE), row_sz.to(DEVICE), col_sz.to(DEVICE), hq, hkv, d, causal=causal, q_data_type=dtype)
    assert w._inputs[0].page_size % multiple == 0  # pages of the column sizes' common divisor
    out, lse = poisoned((hq, qo_len, d), dtype), poisoned((hq, qo_len), torch.float32)
    w.run(q, k, v, out=out, lse=lse)
    for h in range(hkv):
        dense = variable_dense_mask(block_mask[h], row_sz[h].tolist(), col_sz[h].tolist(), causal=causal)
        heads = slice(h * group, (h + 1) * group)
        _check(out[heads].transpose(0, 1), lse[heads].transpose(0, 1), q[heads].transpose(0, 1),
               k[h:h + 1].transpose(0, 1), v[h:h + 1].transpose(0, 1), dense, dtype)
    empty = slice(int(row_sz[0, 0]), int(row_sz[0, :2].sum()))
    assert (out[:group, empty] == 0).all() and torch.isneginf(lse[:group, empty]).all()


def test_variable_strided_inputs_and_forward_alias():
    """Non-contiguous HND views (the usual transpose of NHD) give the contiguous result, with and
    without GQA; forward() applies its options like FlashInfer's (here sm_scale)."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    hkv, qo_len, kv_len, d = 2, 24, 40, 64
    row_sz = torch.tensor([[8, 16], [20, 4]], dtype=torch.int32)
    col_sz = torch.tensor([[10, 30], [25, 15]], dtype=torch.int32)
    block_mask = torch.tensor([[[1, 0], [1, 1]], [[0, 1], [1, 0]]], dtype=torch.bool)
    pattern = (block_mask.to(DEVICE), row_sz.to(DEVICE), col_sz.to(DEVICE))
    for group in (2, 1):
        q = _randn(gen, dtype, qo_len, hkv * group, d).transpose(0, 1)
        k, v = (_randn(gen, dtype, kv_len, hkv, d).transpose(0, 1) for _ in range(2))
        w = flashinfer.VariableBlockSparseAttentionWrapper(_workspace())
        w.plan(*pattern, hkv * group, hkv, d, q_data_type=dtype)
        out, lse = w.run(q, k, v, return_lse=True)
        expect, expect_lse = w.run(q.contiguous(), k.contiguous(), v.contiguous(), return_lse=True)
        assert torch.equal(out, expect) and torch.equal(lse, expect_lse)
        fwd = w.forward(q, k, v, sm_scale=0.3)
        w.plan(*pattern, hkv * group, hkv, d, q_data_type=dtype, sm_scale=0.3)
        assert torch.equal(fwd, w.run(q, k, v))
        with pytest.raises(ValueError, match="out: expected its heads back to back"):
            w.run(q, k, v, out=torch.empty_like(q.transpose(0, 1)).transpose(0, 1))


def test_bsr_forward_alias_and_default_output_dtype():
    dtype = LOW_DTYPES[0]
    gen = _gen()
    M, N, R, C, hq, hkv, d = 8, 8, 4, 4, 2, 2, 64
    indptr, indices = [0, 1, 3], [1, 0, 1]
    q, k, v = _randn(gen, dtype, M, hq, d), _randn(gen, dtype, N, hkv, d), _randn(gen, dtype, N, hkv, d)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace(), backend="fa2")
    assert w.begin_forward == w.plan
    w.begin_forward(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, q_data_type=dtype)
    out = w.run(q, k, v)
    assert out.dtype == torch.float16  # FlashInfer 0.6's o_data_type default, whatever q's dtype
    fwd = w.forward(q, k, v, logits_soft_cap=5.0)
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, q_data_type=dtype, logits_soft_cap=5.0)
    assert torch.equal(fwd, w.run(q, k, v))
    _check(fwd, None, q, k, v, bsr_dense_mask(indptr, indices, M, N, R, C), torch.float16, logits_soft_cap=5.0)


def test_bad_inputs_raise_clear_errors():
    ws = _workspace()
    w = flashinfer.BlockSparseAttentionWrapper(ws)
    ip, ix = _i32([0, 1, 2]), _i32([0, 1])
    with pytest.raises(NotImplementedError, match="vsa_sm100_blk128"):
        flashinfer.BlockSparseAttentionWrapper(ws, backend="vsa_sm100_blk128")
    with pytest.raises(NotImplementedError, match="block_mask"):
        w.plan(None, None, 8, 8, 4, 4, 2, 2, 64, block_mask=torch.ones(2, 2, 2, dtype=torch.bool))
    with pytest.raises(NotImplementedError, match="ROPE_LLAMA"):
        w.plan(ip, ix, 8, 8, 4, 4, 2, 2, 64, pos_encoding_mode="ROPE_LLAMA")
    with pytest.raises(ValueError, match="pos_encoding_mode"):
        w.plan(ip, ix, 8, 8, 4, 4, 2, 2, 64, pos_encoding_mode="rope")
    with pytest.raises(NotImplementedError, match="use_fp16_qk_reduction"):
        w.plan(ip, ix, 8, 8, 4, 4, 2, 2, 64, use_fp16_qk_reduction=True)
    with pytest.raises(ValueError, match="N: expected a multiple of C"):
        w.plan(ip, ix, 8, 9, 4, 4, 2, 2, 64)
    with pytest.raises(ValueError, match=r"indptr: expected ceil\(M / R\) \+ 1 = 4"):
        w.plan(ip, ix, 9, 8, 4, 4, 2, 2, 64)
    with pytest.raises(ValueError, match="indices: block column indices"):
        w.plan(ip, _i32([0, 2]), 8, 8, 4, 4, 2, 2, 64)
    with pytest.raises(ValueError, match="indices"):
        w.plan(ip, _i32([0]), 8, 8, 4, 4, 2, 2, 64)
    with pytest.raises(ValueError, match=r"mask: expected shape \[nnz=2, R=4, C=4\]"):
        w.plan(ip, ix, 8, 8, 4, 4, 2, 2, 64, mask=torch.ones(2, 4, 3, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="packed_mask: expected 4 bytes"):
        w.plan(ip, ix, 8, 8, 4, 4, 2, 2, 64, packed_mask=torch.zeros(3, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(ValueError, match="num_qo_heads"):
        w.plan(ip, ix, 8, 8, 4, 4, 3, 2, 64)
    with pytest.raises(RuntimeError, match="plan"):
        w.run(torch.zeros(8, 2, 64, device=DEVICE), torch.zeros(8, 2, 64), torch.zeros(8, 2, 64))
    w.plan(ip, ix, 8, 8, 4, 4, 2, 2, 64)
    q = torch.zeros(8, 2, 64, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match=r"k: expected shape \[8, 2, 64\]"):
        w.run(q, q[:4], q)
    with pytest.raises(TypeError, match="q: expected dtype torch.float16"):
        w.run(q.float(), q, q)
    with pytest.raises(NotImplementedError, match="scale_q"):
        w.run(q, q, q, scale_q=torch.ones(2, device=DEVICE))
    with pytest.raises(NotImplementedError, match="enable_pdl"):
        w.run(q, q, q, enable_pdl=True)

    vw = flashinfer.VariableBlockSparseAttentionWrapper(ws)
    bm, rs, cs = torch.ones(2, 2, 2, dtype=torch.bool), _i32([[4, 4], [4, 4]]), _i32([[4, 4], [2, 6]])
    with pytest.raises(ValueError, match="block_mask_map: expected num_kv_heads = 1"):
        vw.plan(bm, rs, cs, 2, 1, 64)
    with pytest.raises(ValueError, match=r"block_col_sz: expected shape \[2, 2\]"):
        vw.plan(bm, rs, cs[:, :1], 2, 2, 64)
    with pytest.raises(ValueError, match="block_row_sz: every KV head"):
        vw.plan(bm, _i32([[4, 4], [4, 5]]), cs, 2, 2, 64)
    with pytest.raises(ValueError, match="block_col_sz: block sizes must be non-negative"):
        vw.plan(bm, rs, _i32([[4, 4], [9, -1]]), 2, 2, 64)
    with pytest.raises(TypeError, match="block_mask_map"):
        vw.plan(bm.float(), rs, cs, 2, 2, 64)
    with pytest.raises(NotImplementedError, match="ALIBI"):
        vw.plan(bm, rs, cs, 2, 2, 64, pos_encoding_mode="ALIBI")
    vw.plan(bm, rs, cs, 4, 2, 64)
    with pytest.raises(ValueError, match=r"q: expected shape \[4, 8, 64\]"):
        vw.run(q.view(8, 2, 64), torch.zeros(2, 8, 64, dtype=torch.float16), torch.zeros(2, 8, 64, dtype=torch.float16))


# ----------------------------------------------------------------------------------------------- GPU tier

def _vertical_slash(M, R, n_vertical, band, gen):
    """R x 1 blocks: a few dense key columns every row block sees (before its rows), then a band of
    ``band`` keys ending at the block's last row (sorted: causal in the list is causal)."""
    vertical = sorted(torch.randperm(M, generator=gen)[:n_vertical].tolist())
    indptr, indices = [0], []
    for b in range(-(-M // R)):
        end = min((b + 1) * R, M)
        lo = max(0, end - band)
        cols = sorted({c for c in vertical if c < lo} | set(range(lo, end)))
        indices += cols
        indptr.append(len(indices))
    return indptr, indices


@requires_gpu
@pytest.mark.parametrize("pattern", ["64x64-lower-causal", "64x64-random", "64x1-vertical-slash"])
def test_gpu_bsr_bf16_realistic(pattern):
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(7)
    M = N = 3000 if pattern == "64x64-random" else 4096
    hq, hkv, d = 32, 8, 128
    if pattern == "64x1-vertical-slash":
        R, C, causal = 64, 1, True
        indptr, indices = _vertical_slash(M, R, 100, 512, gen)
    else:
        R, C = 64, 64
        causal = pattern.endswith("causal")
        N = N // C * C
        indptr, indices = _random_bsr(-(-M // R), N // C, 0.3, gen, empty=(3,), lower=causal)
    q, k, v = _randn(gen, dtype, M, hq, d), _randn(gen, dtype, N, hkv, d), _randn(gen, dtype, N, hkv, d)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace())
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, causal=causal, q_data_type=dtype, o_data_type=dtype)
    out, lse = w.run(q, k, v, return_lse=True)
    _check(out, lse, q, k, v, bsr_dense_mask(indptr, indices, M, N, R, C, causal=causal), dtype)


@requires_gpu
def test_gpu_variable_bf16_realistic():
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(8)
    hkv, group, qo_len, kv_len, d = 4, 4, 2048, 3000, 128
    row_sz = torch.tensor([_random_partition(qo_len, 20, gen) for _ in range(hkv)], dtype=torch.int32)
    col_sz = torch.tensor([_random_partition(kv_len, 30, gen) for _ in range(hkv)], dtype=torch.int32)
    block_mask = torch.rand(hkv, 20, 30, generator=gen) < 0.4
    q, k, v = _randn(gen, dtype, hkv * group, qo_len, d), _randn(gen, dtype, hkv, kv_len, d), _randn(gen, dtype, hkv,
                                                                                                      kv_len, d)
    w = flashinfer.VariableBlockSparseAttentionWrapper(_workspace())
    w.plan(block_mask.to(DEVICE), row_sz.to(DEVICE), col_sz.to(DEVICE), hkv * group, hkv, d, q_data_type=dtype)
    out, lse = w.run(q, k, v, return_lse=True)
    for h in range(hkv):
        dense = variable_dense_mask(block_mask[h], row_sz[h].tolist(), col_sz[h].tolist())
        heads = slice(h * group, (h + 1) * group)
        _check(out[heads].transpose(0, 1), lse[heads].transpose(0, 1), q[heads].transpose(0, 1),
               k[h:h + 1].transpose(0, 1), v[h:h + 1].transpose(0, 1), dense, dtype)


@requires_gpu
def test_gpu_cuda_graph_and_torch_compile():
    dtype = torch.bfloat16
    gen = torch.Generator().manual_seed(9)
    M = N = 2048
    R = C = 64
    hq, hkv, d = 32, 8, 128
    indptr, indices = _random_bsr(M // R, N // C, 0.3, gen, lower=True)
    mask = (torch.rand(len(indices), R, C, generator=gen) < 0.9).to(DEVICE)
    q, k, v = _randn(gen, dtype, M, hq, d), _randn(gen, dtype, N, hkv, d), _randn(gen, dtype, N, hkv, d)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace())
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, mask=mask, q_data_type=dtype, o_data_type=dtype)
    out, lse = torch.empty_like(q), torch.empty(M, hq, dtype=torch.float32, device=DEVICE)
    w.run(q, k, v, out=out, lse=lse)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, k, v, out=out, lse=lse)
    for _ in range(2):
        q.copy_(torch.randn(q.shape, generator=gen).to(dtype))
        k.copy_(torch.randn(k.shape, generator=gen).to(dtype))
        out.fill_(float("nan"))
        g.replay()
        torch.cuda.synchronize()
        expect, expect_lse = w.run(q, k, v, return_lse=True)
        assert torch.equal(out, expect) and torch.equal(lse, expect_lse)

    @torch.compile(fullgraph=True)
    def step(q, k, v):
        return w.run(q, k, v, return_lse=True)

    got, got_lse = step(q, k, v)
    assert torch.equal(got, expect) and torch.equal(got_lse, expect_lse)

    vw = flashinfer.VariableBlockSparseAttentionWrapper(_workspace())
    row_sz = torch.full((hkv, 16), M // 16, dtype=torch.int32)
    col_sz = torch.full((hkv, 32), N // 32, dtype=torch.int32)
    vw.plan((torch.rand(hkv, 16, 32, generator=gen) < 0.3).to(DEVICE), row_sz.to(DEVICE), col_sz.to(DEVICE), hq, hkv,
            d, q_data_type=dtype)
    qh, kh, vh = q.transpose(0, 1).contiguous(), k.transpose(0, 1).contiguous(), v.transpose(0, 1).contiguous()
    eager = vw.run(qh, kh, vh)
    vstep = torch.compile(lambda q, k, v: vw.run(q, k, v), fullgraph=True)
    assert torch.equal(vstep(qh, kh, vh), eager)
