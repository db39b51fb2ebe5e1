"""Attention variants (``flashinfer_triton.AttentionVariant``) against plain PyTorch references.

- The built-in options (soft cap, sliding window, ALiBi, custom mask) re-expressed as user hooks
  give the built-ins' answers (both checked against the float64 reference).
- The examples (examples/attention_variants.py: FlashSigmoid, T5 bias, document mask, prefix-LM,
  sinks) through every kind of wrapper: single decode/prefill, batch decode, ragged and paged
  prefill, cascade levels, and FlashInfer's sink wrapper with its exact LSE.
- Errors: a hook that does not compile or returns the wrong shape/dtype names the function; bad
  variant arguments name the argument.
- GPU tier: a variant in bfloat16 at realistic sizes, under CUDA-graph capture, and through
  ``torch.compile(fullgraph=True)``.
"""

import math

import pytest
import torch
import triton
import triton.language as tl

import flashinfer_triton as flashinfer
from examples import attention_variants as ex
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference.attention import alibi_slopes_ref, attention_ref, build_paged_cache
from tests.reference.variants import positions, t5_relative_position_bucket, variant_attention_ref

WS_BYTES = gpu_or_cpu(16 << 20, 256 << 20)


def _workspace():
    return torch.empty(WS_BYTES, dtype=torch.uint8, device=DEVICE)


def _gen():
    return torch.Generator().manual_seed(torch.initial_seed())


def _i32(values):
    return torch.tensor(values, dtype=torch.int32, device=DEVICE)


def _cumsum(lens):
    return [0] + torch.tensor(lens).cumsum(0).tolist()


def _check(out, lse, ref_fn, dtype, name):
    """``ref_fn(compute_dtype) -> (out, lse)`` of the same rows; LSE checked when given."""
    ref, ref_lse = ref_fn(torch.float64)
    low, low_lse = ref_fn(dtype)
    assert_close_to_reference(out, ref, low, name=f"{name} out")
    if lse is not None:
        assert_close_to_reference(lse, ref_lse, low_lse, name=f"{name} lse")


# ---------------------------------------------------------------------------------------------
# The built-in options as user variants.


@triton.jit
def soft_cap_hook(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    cap = params[4]
    return cap * (2.0 * tl.sigmoid(2.0 * logits / cap) - 1.0)  # cap * tanh(logits / cap)


@triton.jit
def window_hook(q_pos, kv_pos, qo_head, kv_head, req, params):
    return kv_pos[None, :] >= q_pos[:, None] - params[4].to(tl.int32)


@triton.jit
def window_range(q_first, q_last, kv_len, req, params):
    return q_first - params[4].to(tl.int32), q_last + 1


@triton.jit
def alibi_hook(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    slope = tl.load(params[0] + qo_head)
    return logits + slope[:, None] * (kv_pos[None, :] - q_pos[:, None]).to(tl.float32)


@triton.jit
def custom_mask_hook(q_pos, kv_pos, qo_head, kv_head, req, params):
    """``mask`` uint8, request b's [qo_len, kv_len] row-major from ``info[b, 0]``; ``info[b]`` =
    (offset, qo_len, kv_len)."""
    mask, info = params[0], params[1]
    offset = tl.load(info + 3 * req).to(tl.int64)
    qo_len = tl.load(info + 3 * req + 1)
    kv_len = tl.load(info + 3 * req + 2)
    q_idx = q_pos - (kv_len - qo_len)
    inside = (q_idx[:, None] < qo_len) & (kv_pos[None, :] < kv_len)
    bit = offset + q_idx.to(tl.int64)[:, None] * kv_len + kv_pos[None, :]
    return tl.load(mask + bit, mask=inside, other=0) != 0


SOFT_CAP = flashinfer.AttentionVariant(logits_transform=soft_cap_hook, scalars=("cap",))
WINDOW = flashinfer.AttentionVariant(logits_mask=window_hook, kv_range=window_range, scalars=("window_left",))
ALIBI = flashinfer.AttentionVariant(logits_transform=alibi_hook, tensors=("slopes",))
CUSTOM_MASK = flashinfer.AttentionVariant(logits_mask=custom_mask_hook, tensors=("mask", "info"))


@pytest.mark.parametrize("option", ["soft_cap", "window", "alibi", "custom_mask"])
def test_builtin_options_as_variants(option):
    """Paged prefill (a prefill and an append request): the option built in, then the same as a
    variant; both against the float64 reference, out and LSE."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    page_size, hq, hkv, d = 8, 4, 2, 64
    kv_lens = [gpu_or_cpu(45, 900), gpu_or_cpu(30, 700)]
    # ALiBi's built-in bias counts the raw query index (FlashInfer's convention): qo_len == kv_len
    # makes it the position the hook sees.
    qo_lens = kv_lens if option == "alibi" else [kv_lens[0], gpu_or_cpu(7, 100)]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    qo_indptr = _i32(_cumsum(qo_lens))
    masks = [torch.rand(n, k, generator=gen) > 0.3 for n, k in zip(qo_lens, kv_lens)]
    builtin, ref_opts, variant, args = {
        "soft_cap": (dict(logits_soft_cap=3.0), dict(logits_soft_cap=3.0), SOFT_CAP, (3.0,)),
        "window": (dict(window_left=9), dict(window_left=9), WINDOW, (9,)),
        "alibi": (dict(pos_encoding_mode="ALIBI"), dict(pos_encoding_mode="ALIBI"), ALIBI,
                  (alibi_slopes_ref(hq).float().to(DEVICE),)),
        "custom_mask": (dict(custom_mask=torch.cat([m.reshape(-1) for m in masks]).to(DEVICE)), {}, CUSTOM_MASK,
                        (torch.cat([m.reshape(-1) for m in masks]).to(torch.uint8).to(DEVICE),
                         _i32([[o, n, k] for o, n, k in zip(_cumsum([m.numel() for m in masks]), qo_lens, kv_lens)]))),
    }[option]
    outs = {}
    for name, w in (("built-in", flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace())),
                    ("variant", flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), variant=variant))):
        # A custom mask replaces the causal mask (FlashInfer's rule): its variant runs non-causal.
        w.plan(qo_indptr, indptr, indices, last, hq, hkv, d, page_size, causal=option != "custom_mask",
               q_data_type=dtype, **(builtin if name == "built-in" else {}))
        outs[name] = w.run(q, cache, *(args if name == "variant" else ()), return_lse=True)
    rows = _cumsum(qo_lens)
    for b in range(len(kv_lens)):
        sl = slice(rows[b], rows[b + 1])
        opts = dict(ref_opts, causal=option != "custom_mask")
        if option == "custom_mask":
            opts["custom_mask"] = masks[b]
        for name, (out, lse) in outs.items():
            _check(out[sl], lse[sl], lambda cd: attention_ref(q[sl], ks[b], vs[b], compute_dtype=cd, **opts), dtype,
                   f"{option} {name} request {b}")


# ---------------------------------------------------------------------------------------------
# The examples, through every kind of wrapper.


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_flash_sigmoid_ragged_prefill_and_single_decode(dtype):
    gen = _gen()
    hq, hkv, d = 4, 2, 64
    qo_lens, kv_lens = [gpu_or_cpu(20, 500), 1], [gpu_or_cpu(33, 800), gpu_or_cpu(19, 300)]
    k = torch.randn(sum(kv_lens), hkv, d, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(sum(kv_lens), hkv, d, generator=gen).to(dtype).to(DEVICE)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace(), variant=ex.FLASH_SIGMOID)
    w.plan(_i32(_cumsum(qo_lens)), _i32(_cumsum(kv_lens)), hq, hkv, d, causal=True, q_data_type=dtype)
    out = poisoned((sum(qo_lens), hq, d), dtype)
    assert w.run(q, k, v, -1.5, out=out) is out
    qr, kr = _cumsum(qo_lens), _cumsum(kv_lens)
    for b in range(2):
        qb, kb, vb = q[qr[b]:qr[b + 1]], k[kr[b]:kr[b + 1]], v[kr[b]:kr[b + 1]]
        q_pos, kv_pos = positions(len(qb), len(kb), DEVICE)
        _check(out[qr[b]:qr[b + 1]], None, lambda cd: variant_attention_ref(
            qb, kb, vb, keep=kv_pos <= q_pos, sigmoid_bias=-1.5, compute_dtype=cd), dtype, f"sigmoid request {b}")
    # Single decode: the last request's query over its KV, HND layout.
    kb, vb = k[kr[1]:], v[kr[1]:]
    got = flashinfer.single_decode_with_kv_cache(q[-1], kb.transpose(0, 1).contiguous(), vb.transpose(0, 1).contiguous(),
                                                 kv_layout="HND", variant=ex.FLASH_SIGMOID, variant_args=(-1.5,))
    _check(got[None], None, lambda cd: variant_attention_ref(q[-1:], kb, vb, sigmoid_bias=-1.5, compute_dtype=cd),
           dtype, "single decode sigmoid")
    with pytest.raises(ValueError, match="use_softmax=False"):
        w.run(q, k, v, -1.5, return_lse=True)


def _t5_reference(weights, qb, kb, vb, causal, cd):
    q_pos, kv_pos = positions(len(qb), len(kb), DEVICE)
    bias = weights[t5_relative_position_bucket(kv_pos - q_pos)].permute(2, 0, 1)
    return variant_attention_ref(qb, kb, vb, bias=bias, keep=(kv_pos <= q_pos) if causal else None, compute_dtype=cd)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_t5_bias_paged_prefill_and_batch_decode(dtype):
    """A mixed batch (prefill, append, decode row) through the paged prefill wrapper, then decode
    of every request through the batch decode wrapper with a split KV; the table's bucket mapping
    is checked against Hugging Face T5's formula."""
    gen = _gen()
    page_size, hq, hkv, d = 16, 8, 2, 64
    kv_lens = [gpu_or_cpu(150, 3000), gpu_or_cpu(40, 600), gpu_or_cpu(70, 2000)]
    qo_lens = [kv_lens[0], gpu_or_cpu(9, 100), 1]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    weights = torch.randn(32, hq, generator=gen).to(DEVICE)
    table = ex.t5_bias_table(weights)
    rel = torch.arange(-300, 301, device=DEVICE)
    assert torch.equal(table[:, rel.clamp(-128, 128) + 128], weights[t5_relative_position_bucket(rel)].t().float())
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), variant=ex.T5_BIAS)
    w.plan(_i32(_cumsum(qo_lens)), indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    out, lse = w.run(q, cache, *ex.T5_BIAS.args(bias_table=table), return_lse=True)
    rows = _cumsum(qo_lens)
    for b in range(3):
        sl = slice(rows[b], rows[b + 1])
        _check(out[sl], lse[sl], lambda cd: _t5_reference(weights, q[sl], ks[b], vs[b], True, cd), dtype,
               f"t5 prefill request {b}")
    dq = torch.randn(3, hq, d, generator=gen).to(dtype).to(DEVICE)
    dw = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), variant=ex.T5_BIAS)
    dw.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype, fixed_split_size=2)
    assert dw.planned.plan.num_split_requests > 0, "the decode check must take the split-KV merge"
    out, lse = dw.run(dq, cache, table, return_lse=True)
    for b in range(3):
        _check(out[b:b + 1], lse[b:b + 1], lambda cd: _t5_reference(weights, dq[b:b + 1], ks[b], vs[b], False, cd),
               dtype, f"t5 decode request {b}")


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_document_mask_packed_sequences(dtype):
    """Ragged prefill of two requests, each packing several documents (causal inside each); the
    variant's key range skips the blocks of other documents."""
    gen = _gen()
    hq, hkv, d = 4, 1, 64
    kv_lens = [gpu_or_cpu(50, 2048), gpu_or_cpu(37, 1500)]
    doc_lens = [[gpu_or_cpu(20, 700), gpu_or_cpu(1, 1), gpu_or_cpu(29, 1347)], [kv_lens[1]]]
    bounds = ex.document_bounds_table(doc_lens)
    docs = bounds[:, 0].contiguous()  # a token's document is named by its first position
    k = torch.randn(sum(kv_lens), hkv, d, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(sum(kv_lens), hkv, d, generator=gen).to(dtype).to(DEVICE)
    q = torch.randn(sum(kv_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    offsets = _i32(_cumsum(kv_lens))
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_workspace(), variant=ex.DOCUMENT_MASK)
    w.plan(offsets, offsets, hq, hkv, d, causal=True, q_data_type=dtype)
    out, lse = w.run(q, k, v, bounds.to(DEVICE), offsets, return_lse=True)
    r = _cumsum(kv_lens)
    for b in range(2):
        sl = slice(r[b], r[b + 1])
        doc = docs[sl].to(DEVICE)
        q_pos, kv_pos = positions(kv_lens[b], kv_lens[b], DEVICE)
        keep = (kv_pos <= q_pos) & (doc[:, None] == doc[None, :])
        _check(out[sl], lse[sl], lambda cd: variant_attention_ref(q[sl], k[sl], v[sl], keep=keep, compute_dtype=cd),
               dtype, f"document mask request {b}")


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_prefix_lm_single_prefill(dtype):
    gen = _gen()
    n, hq, hkv, d, prefix = gpu_or_cpu(41, 1000), 4, 2, 64, gpu_or_cpu(15, 300)
    q = torch.randn(n, hq, d, generator=gen).to(dtype).to(DEVICE)
    k = torch.randn(n, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(n, hkv, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, return_lse=True, variant=ex.PREFIX_LM,
                                                       variant_args=(_i32([prefix]),))
    q_pos, kv_pos = positions(n, n, DEVICE)
    _check(out, lse, lambda cd: variant_attention_ref(q, k, v, keep=(kv_pos <= q_pos) | (kv_pos < prefix),
                                                      compute_dtype=cd), dtype, "prefix-LM")


def test_variant_in_cascade_levels():
    """A position-independent variant (soft cap) in both levels of a cascade: the merged result is
    the reference over each request's whole KV."""
    from tests.test_cascade import Cascade

    dtype = LOW_DTYPES[0]
    gen = _gen()
    batch, page_size, hq, hkv, d = 3, 8, 4, 2, 64
    c = Cascade([[batch], [1] * batch], [[3 * page_size], [9, 1, 20]], [1] * batch, page_size, hkv, d, dtype, gen)
    w = flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), variant=SOFT_CAP)
    w.plan(*c.levels, hq, hkv, d, page_size, q_data_type=dtype)
    q = torch.randn(batch, hq, d, generator=gen).to(dtype).to(DEVICE)
    out, lse = w.run(q, c.cache, 4.0, return_lse=True)
    c.check(out, lse, q, dtype, name="cascade soft-cap variant ", logits_soft_cap=4.0)
    with pytest.raises(NotImplementedError, match="use_softmax=False"):
        flashinfer.MultiLevelCascadeAttentionWrapper(2, _workspace(), variant=ex.FLASH_SIGMOID)


@triton.jit
def keep_all(q_pos, kv_pos, qo_head, kv_head, req, params):
    return (kv_pos[None, :] >= 0) & (q_pos[:, None] >= 0)


@triton.jit
def first_keys(q_first, q_last, kv_len, req, params):
    return 0, params[4].to(tl.int32)


def test_kv_range_bounds_the_keys_visited():
    """A key range [0, n) with a mask that keeps everything: attention over the first n keys only
    (the range is honoured exactly at its end; its start is aligned down and left to the mask)."""
    dtype = LOW_DTYPES[0]
    gen = _gen()
    q = torch.randn(gpu_or_cpu(9, 300), 4, 64, generator=gen).to(dtype).to(DEVICE)
    k = torch.randn(gpu_or_cpu(40, 900), 2, 64, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(k.shape, generator=gen).to(dtype).to(DEVICE)
    variant = flashinfer.AttentionVariant(logits_mask=keep_all, kv_range=first_keys, scalars=("n",))
    n = gpu_or_cpu(13, 333)
    out, lse = flashinfer.single_prefill_with_kv_cache(q, k, v, return_lse=True, variant=variant, variant_args=(n,))
    _check(out, lse, lambda cd: attention_ref(q, k[:n], v[:n], compute_dtype=cd), dtype, "first keys")


def test_variant_in_block_sparse_wrappers():
    """A position-free variant (soft cap) on both block-sparse wrappers: the dense reference with
    the expanded block mask and the soft cap."""
    from tests.reference.sparse import bsr_dense_mask, variable_dense_mask
    from tests.test_sparse import _random_bsr

    dtype = LOW_DTYPES[0]
    gen = _gen()
    R, C, M, N, hq, hkv, d = 16, 16, gpu_or_cpu(40, 500), gpu_or_cpu(64, 1024), 4, 2, 64
    indptr, indices = _random_bsr(-(-M // R), N // C, 0.6, gen)
    q = torch.randn(M, hq, d, generator=gen).to(dtype).to(DEVICE)
    k = torch.randn(N, hkv, d, generator=gen).to(dtype).to(DEVICE)
    v = torch.randn(N, hkv, d, generator=gen).to(dtype).to(DEVICE)
    w = flashinfer.BlockSparseAttentionWrapper(_workspace(), variant=SOFT_CAP)
    w.plan(_i32(indptr), _i32(indices), M, N, R, C, hq, hkv, d, q_data_type=dtype, o_data_type=dtype)
    out, lse = w.run(q, k, v, return_lse=True, variant_args=(5.0,))
    dense = bsr_dense_mask(indptr, indices, M, N, R, C).to(DEVICE)
    _check(out, lse, lambda cd: attention_ref(q, k, v, custom_mask=dense, logits_soft_cap=5.0, compute_dtype=cd),
           dtype, "block-sparse soft-cap variant")
    rows, cols = [M // 2, M - M // 2], [N // 4, 3 * N // 4]
    block_mask = torch.tensor([[[True, False], [True, True]]] * hkv)
    vw = flashinfer.VariableBlockSparseAttentionWrapper(_workspace(), variant=SOFT_CAP)
    vw.plan(block_mask.to(DEVICE), _i32([rows] * hkv), _i32([cols] * hkv), hq, hkv, d, q_data_type=dtype)
    qh, kh, vh = (x.transpose(0, 1).contiguous() for x in (q, k, v))
    out = vw.run(qh, kh, vh, variant_args=(5.0,))
    dense = variable_dense_mask(block_mask[0], rows, cols).to(DEVICE)
    _check(out.transpose(0, 1), None, lambda cd: attention_ref(q, k, v, custom_mask=dense, logits_soft_cap=5.0,
                                                               compute_dtype=cd), dtype, "variable-block soft-cap variant")


# ---------------------------------------------------------------------------------------------
# Attention sinks: FlashInfer's sink wrapper.


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_attention_sink_wrapper_matches_flashinfer_definition(dtype):
    """``BatchAttentionWithAttentionSinkWrapper.run(q, kv, sink, sm_scale)`` with a sliding window:
    out and LSE (base 2, the sink in the denominator) as FlashInfer's sink reference; a row with no
    visible key gives out 0 and lse = sink * log2 e (FlashInfer's OnlineSoftmaxWithSink)."""
    gen = _gen()
    page_size, hq, hkv, d, window = 4, 8, 2, 64, gpu_or_cpu(10, 127)
    kv_lens = [gpu_or_cpu(30, 1000), gpu_or_cpu(17, 300), gpu_or_cpu(45, 2000)]
    qo_lens = [kv_lens[0], gpu_or_cpu(5, 64), 1]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    sinks = (torch.rand(hq, generator=gen) * 5).to(DEVICE)
    w = flashinfer.BatchAttentionWithAttentionSinkWrapper(_workspace(), q_data_type=dtype, kv_data_type=dtype,
                                                          head_dim_qk=d, head_dim_vo=d, window_left=window)
    w.plan(_i32(_cumsum(qo_lens)), indptr, indices, last, hq, hkv, d, page_size, causal=True, window_left=window)
    sm_scale = 0.7 / math.sqrt(d)  # run()'s sm_scale overrides the planned default
    out, lse = w.run(q, cache, sinks, sm_scale, return_lse=True)
    rows = _cumsum(qo_lens)
    for b in range(3):
        sl = slice(rows[b], rows[b + 1])
        _check(out[sl], lse[sl], lambda cd: attention_ref(q[sl], ks[b], vs[b], causal=True, window_left=window,
                                                          sm_scale=sm_scale, sinks=sinks, compute_dtype=cd),
               dtype, f"sink wrapper request {b}")
    # No visible key (a custom mask of all False): out 0, lse = the sink alone.
    mw = flashinfer.BatchAttentionWithAttentionSinkWrapper(_workspace(), q_data_type=dtype, kv_data_type=dtype,
                                                           head_dim_qk=d, head_dim_vo=d)
    mw.plan(_i32([0, 2]), indptr[:2], indices[: int(indptr[1])], last[:1], hq, hkv, d, page_size,
            custom_mask=torch.zeros(2 * kv_lens[0], dtype=torch.bool, device=DEVICE))
    out0, lse0 = mw.run(q[:2], cache, sinks, return_lse=True)
    assert torch.equal(out0, torch.zeros_like(out0))
    torch.testing.assert_close(lse0, (sinks * 1.4426950408889634).expand(2, hq), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="sink"):
        w.run(q, cache)


# ---------------------------------------------------------------------------------------------
# Errors.


@triton.jit
def wrong_dtype_hook(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    return logits.to(tl.float16)


@triton.jit
def wrong_shape_hook(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    return tl.sum(logits, 1)


@triton.jit
def broken_hook(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    return logits + not_defined_anywhere  # noqa: F821


@triton.jit
def int_mask_hook(q_pos, kv_pos, qo_head, kv_head, req, params):
    return (kv_pos[None, :] <= q_pos[:, None]).to(tl.int32)


@triton.jit
def block_range(q_first, q_last, kv_len, req, params):
    return tl.arange(0, 16), q_last + 1


@pytest.mark.parametrize("hook,role,kind", [
    pytest.param(wrong_dtype_hook, "logits_transform", "wrong shape or dtype", id="dtype"),
    pytest.param(wrong_shape_hook, "logits_transform", "wrong shape or dtype", id="shape"),
    pytest.param(broken_hook, "logits_transform", "does not compile", id="name-error"),
    pytest.param(int_mask_hook, "logits_mask", "wrong shape or dtype", id="mask-dtype"),
    pytest.param(block_range, "kv_range", "wrong shape or dtype", id="range-shape"),
])
def test_bad_hook_error_names_the_function(hook, role, kind):
    variant = flashinfer.AttentionVariant(**{role: hook}, **({"logits_mask": keep_all} if role == "kv_range" else {}))
    q = torch.randn(3, 4, 64, device=DEVICE, dtype=LOW_DTYPES[0])
    k = torch.randn(5, 2, 64, device=DEVICE, dtype=LOW_DTYPES[0])
    with pytest.raises(flashinfer.VariantError) as info:
        flashinfer.single_prefill_with_kv_cache(q, k, k, variant=variant)
    msg = str(info.value)
    assert f"{role} {hook.fn.__name__!r}" in msg and kind in msg and "test_variants.py" in msg, msg
    assert f"{role}(" in msg  # the hook signature


def test_bad_variant_arguments():
    def plain(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
        return logits

    with pytest.raises(TypeError, match="logits_transform: expected a @triton.jit function.*'plain'"):
        flashinfer.AttentionVariant(logits_transform=plain)
    with pytest.raises(TypeError, match="logits_transform: 'window_hook'.*takes 7 positional"):
        flashinfer.AttentionVariant(logits_transform=window_hook)
    with pytest.raises(ValueError, match="at most 4 tensors"):
        flashinfer.AttentionVariant(logits_transform=alibi_hook, tensors=tuple("abcde"))
    with pytest.raises(ValueError, match="use_softmax=False"):
        flashinfer.AttentionVariant(logits_mask=window_hook, use_softmax=False)
    with pytest.raises(ValueError, match="kv_range: .*logits_mask"):
        flashinfer.AttentionVariant(logits_transform=alibi_hook, kv_range=window_range)
    with pytest.raises(TypeError, match="variant: expected a flashinfer_triton.AttentionVariant"):
        flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace(), variant=alibi_hook)
    with pytest.raises(TypeError, match="missing \\['slopes'\\]"):
        ALIBI.args()
    with pytest.raises(TypeError, match="unknown argument 'slope'"):
        ALIBI.args(slope=1)
    # run(): argument count, types and devices, and extra arguments without a variant.
    q = torch.randn(3, 4, 64, device=DEVICE, dtype=LOW_DTYPES[0])
    k = torch.randn(5, 2, 64, device=DEVICE, dtype=LOW_DTYPES[0])
    with pytest.raises(TypeError, match="takes 1 tensor.*got 0 extra"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, variant=ALIBI)
    with pytest.raises(TypeError, match="slopes: variant 'alibi_hook' expects a tensor"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, variant=ALIBI, variant_args=(1.0,))
    with pytest.raises(TypeError, match="cap: variant 'soft_cap_hook' expects a Python number"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, variant=SOFT_CAP, variant_args=(torch.ones(1),))
    with pytest.raises(TypeError, match="slopes: expected one of"):
        flashinfer.single_prefill_with_kv_cache(q, k, k, variant=ALIBI, variant_args=(torch.ones(4, dtype=torch.bool),))
    cache, indptr, indices, last, _, _ = build_paged_cache([5], 4, 2, 64, LOW_DTYPES[0], DEVICE)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_workspace())
    w.plan(indptr, indices, last, 4, 2, 64, 4, q_data_type=LOW_DTYPES[0])
    with pytest.raises(TypeError, match="has no variant="):
        w.run(q[:1], cache, 1.0)


# ---------------------------------------------------------------------------------------------
# GPU tier: bfloat16, CUDA graphs, torch.compile.


def _t5_gpu_problem(gen):
    dtype = torch.bfloat16
    page_size, hq, hkv, d = 16, 32, 8, 128
    kv_lens = [2048, 777, 4000, 1]
    qo_lens = [2048, 100, 1, 1]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, DEVICE, generator=gen)
    q = torch.randn(sum(qo_lens), hq, d, generator=gen).to(dtype).to(DEVICE)
    weights = torch.randn(32, hq, generator=gen).to(DEVICE)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_workspace(), variant=ex.T5_BIAS)
    w.plan(_i32(_cumsum(qo_lens)), indptr, indices, last, hq, hkv, d, page_size, causal=True, q_data_type=dtype)
    return w, cache, q, weights, ks, vs, qo_lens


@requires_gpu
def test_gpu_variant_bf16_cuda_graph_and_torch_compile():
    """T5 bias in bfloat16 on a mixed batch against the reference; the same run() captured in a
    CUDA graph follows a new bias table written in place; torch.compile(fullgraph=True) through the
    registered op gives the eager answer."""
    gen = torch.Generator().manual_seed(5)
    w, cache, q, weights, ks, vs, qo_lens = _t5_gpu_problem(gen)
    table = ex.t5_bias_table(weights)
    out, lse = w.run(q, cache, table, return_lse=True)
    rows = _cumsum(qo_lens)
    for b in range(len(qo_lens)):
        sl = slice(rows[b], rows[b + 1])
        _check(out[sl], lse[sl], lambda cd: _t5_reference(weights, q[sl], ks[b], vs[b], True, cd), torch.bfloat16,
               f"bf16 t5 request {b}")

    graph_out = torch.empty_like(out)
    w.run(q, cache, table, out=graph_out)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        w.run(q, cache, table, out=graph_out)
    weights2 = torch.randn(32, q.shape[1], generator=gen).to(DEVICE)
    table.copy_(ex.t5_bias_table(weights2))
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(graph_out, w.run(q, cache, table), rtol=0, atol=0)
    assert not torch.equal(graph_out, out), "the replay must read the new table"

    @torch.compile(fullgraph=True)
    def step(q, cache, table):
        return w.run(q, cache, table, return_lse=True)

    c_out, c_lse = step(q, cache, table)
    e_out, e_lse = w.run(q, cache, table, return_lse=True)
    torch.testing.assert_close(c_out, e_out, rtol=0, atol=0)
    torch.testing.assert_close(c_lse, e_lse, rtol=0, atol=0)
