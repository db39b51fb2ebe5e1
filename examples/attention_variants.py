"""Attention variants written in Python: small Triton functions compiled into flashinfer_triton's
attention kernel, with every wrapper (here: batch prefill over a paged cache, ragged prefill,
decode), on NVIDIA and AMD GPUs or the CPU interpreter.

- FlashSigmoid: sigmoid weights instead of a softmax (``use_softmax=False``), as in FlashInfer's paper.
- T5-style relative-position bias, read from a per-head table.
- Document masking for packed sequences (several documents in one request).
- Prefix-LM: bidirectional attention inside each request's prefix, causal after it.
- Attention sinks (gpt-oss): a learned logit per head in the softmax denominator.

Each runs against a plain PyTorch version of the same math and prints the largest difference:

    python examples/attention_variants.py          # GPU if there is one, else the CPU interpreter

A hook's arguments: ``logits`` float32 [BLOCK_M, BLOCK_N] (``sm_scale * q.k``), ``q_pos`` int32
[BLOCK_M] and ``kv_pos`` int32 [BLOCK_N] (positions in the request's sequence), ``qo_head`` int32
[BLOCK_M], ``kv_head`` and ``req`` scalars, ``params`` = (4 tensors, 4 float scalars) as declared.
"""

from __future__ import annotations

import math
import os
import sys

import torch

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if __name__ == "__main__" and not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before the hooks are decorated (an importer's setting stays)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import flashinfer_triton as flashinfer  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The variants: a few lines of Triton each.


@triton.jit
def sigmoid_weights(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    """FlashSigmoid: each key's weight is ``sigmoid(sm_scale * q.k + bias)``; no softmax."""
    return tl.sigmoid(logits + params[4])


FLASH_SIGMOID = flashinfer.AttentionVariant(logits_transform=sigmoid_weights, use_softmax=False, scalars=("bias",),
                                            name="flash_sigmoid")

T5_MAX_DISTANCE = tl.constexpr(128)  # T5's buckets saturate beyond it: the table covers [-128, 128]


@triton.jit
def t5_relative_bias(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    """T5 bias: ``table[head, clamp(kv_pos - q_pos) + max_distance]`` added to the logits."""
    rel = tl.minimum(tl.maximum(kv_pos[None, :] - q_pos[:, None], -T5_MAX_DISTANCE), T5_MAX_DISTANCE)
    offset = qo_head.to(tl.int64)[:, None] * (2 * T5_MAX_DISTANCE + 1) + (rel + T5_MAX_DISTANCE)
    return logits + tl.load(params[0] + offset)


T5_BIAS = flashinfer.AttentionVariant(logits_transform=t5_relative_bias, tensors=("bias_table",), name="t5_bias")


@triton.jit
def document_bounds(params, req, pos):
    """(first, end) positions of the documents holding positions ``pos`` of request ``req``:
    ``bounds`` int32 [tokens, 2] covers every KV token of every request, request ``req``'s rows from
    ``kv_offsets[req]``. Positions are clamped so that padding rows and keys stay in bounds."""
    bounds, kv_offsets = params[0], params[1]
    start = tl.load(kv_offsets + req)
    last = tl.load(kv_offsets + req + 1) - start - 1
    row = (start + tl.minimum(tl.maximum(pos, 0), last)).to(tl.int64)
    return tl.load(bounds + 2 * row), tl.load(bounds + 2 * row + 1)


@triton.jit
def same_document(q_pos, kv_pos, qo_head, kv_head, req, params):
    """Packed sequences: a query sees only the keys of its own document."""
    q_doc, _ = document_bounds(params, req, q_pos)
    kv_doc, _ = document_bounds(params, req, kv_pos)
    return q_doc[:, None] == kv_doc[None, :]


@triton.jit
def document_range(q_first, q_last, kv_len, req, params):
    """A tile of queries sees keys from its first query's document start to its last query's
    document end: blocks outside are skipped."""
    lo, _ = document_bounds(params, req, q_first)
    _, hi = document_bounds(params, req, q_last)
    return lo, hi


DOCUMENT_MASK = flashinfer.AttentionVariant(logits_mask=same_document, kv_range=document_range,
                                            tensors=("doc_bounds", "kv_offsets"), name="document_mask")


@triton.jit
def prefix_lm(q_pos, kv_pos, qo_head, kv_head, req, params):
    """Bidirectional inside request ``req``'s first ``prefix_len[req]`` tokens, causal after them."""
    prefix = tl.load(params[0] + req)
    return (kv_pos[None, :] <= q_pos[:, None]) | (kv_pos[None, :] < prefix)


@triton.jit
def prefix_lm_range(q_first, q_last, kv_len, req, params):
    return 0, tl.maximum(q_last + 1, tl.load(params[0] + req))


PREFIX_LM = flashinfer.AttentionVariant(logits_mask=prefix_lm, kv_range=prefix_lm_range, tensors=("prefix_len",),
                                        name="prefix_lm")

# ---------------------------------------------------------------------------------------------
# Host-side helpers the variants need.


def t5_bucket(relative_position: torch.Tensor, bidirectional: bool = True, num_buckets: int = 32,
              max_distance: int = 128) -> torch.Tensor:
    """T5's ``_relative_position_bucket`` (``relative_position = kv - q``)."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        n = relative_position.abs()
    else:
        n = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(n < max_exact, n, large)


def document_bounds_table(doc_lens):
    """``doc_lens``: per request, the lengths of the documents packed into it (summing to its KV
    length) -> int32 ``[sum of all, 2]``: each token's document (first, end) positions."""
    rows = []
    for lens in doc_lens:
        start = 0
        for n in lens:
            rows += [[start, start + n]] * n
            start += n
    return torch.tensor(rows, dtype=torch.int32).reshape(-1, 2)


def t5_bias_table(weights: torch.Tensor, bidirectional: bool = True) -> torch.Tensor:
    """``weights`` [num_buckets, num_heads] (T5's ``relative_attention_bias``) -> float32
    ``[num_heads, 2 * T5_MAX_DISTANCE + 1]``: the bias of every relative position in [-128, 128]."""
    d = T5_MAX_DISTANCE.value
    rel = torch.arange(-d, d + 1, device=weights.device)
    return weights[t5_bucket(rel, bidirectional, weights.shape[0], d)].t().contiguous().float()


# ---------------------------------------------------------------------------------------------
# The same math in plain PyTorch, for the check.


def dense_attention(q, k, v, bias=None, keep=None, use_softmax=True, sinks=None):
    """q [L, H, D], k/v [K, H_kv, D]; bias float [H, L, K]; keep bool broadcastable to [H, L, K]."""
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = torch.einsum("qhd,khd->hqk", q.double(), k) / math.sqrt(q.shape[-1])
    if bias is not None:
        s = s + bias.double()
    if not use_softmax:
        w = torch.sigmoid(s) if keep is None else torch.sigmoid(s) * keep
        return torch.einsum("hqk,khd->qhd", w, v)
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    if sinks is not None:
        s = torch.cat([s, sinks.double()[:, None, None].expand(-1, s.shape[1], 1)], -1)
        v = torch.cat([v, torch.zeros_like(v[:1])])
    return torch.einsum("hqk,khd->qhd", torch.nan_to_num(torch.softmax(s, -1)), v)


def causal(L, K, device):
    return torch.arange(K, device=device)[None, :] <= torch.arange(L, device=device)[:, None] + K - L


# ---------------------------------------------------------------------------------------------
# Running them.


def paged_batch(kv_lens, qo_lens, heads, head_dim, page_size, dtype, device, gen):
    """A paged cache holding ``kv_lens`` tokens per request and queries for the last ``qo_lens``:
    (cache, qo_indptr, kv_page_indptr, page_ids, last_page_len, q, [k_i], [v_i])."""
    hq, hkv = heads
    pages = [-(-n // page_size) for n in kv_lens]
    ids = torch.randperm(sum(pages), generator=gen)
    cache = torch.randn(sum(pages), 2, page_size, hkv, head_dim, generator=gen).to(dtype).to(device)
    ks, vs, start = [], [], 0
    for n, p in zip(kv_lens, pages):
        sel = cache[ids[start:start + p].to(device)]
        ks.append(sel[:, 0].reshape(-1, hkv, head_dim)[:n])
        vs.append(sel[:, 1].reshape(-1, hkv, head_dim)[:n])
        start += p
    i32 = dict(dtype=torch.int32, device=device)
    qo_indptr = torch.tensor([0] + torch.tensor(qo_lens).cumsum(0).tolist(), **i32)
    kv_indptr = torch.tensor([0] + torch.tensor(pages).cumsum(0).tolist(), **i32)
    last = torch.tensor([n - (p - 1) * page_size for n, p in zip(kv_lens, pages)], **i32)
    q = torch.randn(sum(qo_lens), hq, head_dim, generator=gen).to(dtype).to(device)
    return cache, qo_indptr, kv_indptr, ids.to(**i32), last, q, ks, vs


def random_split(n, parts, gen):
    """``n`` tokens cut into ``parts`` documents of random (nonzero where possible) lengths."""
    cuts = sorted(torch.randint(1, max(n, 2), (parts - 1,), generator=gen).tolist())
    return [b - a for a, b in zip([0] + cuts, cuts + [n]) if b > a]


def run_examples(device, dtype=torch.float16, kv_lens=(300, 77, 1000), qo_lens=(300, 13, 1), heads=(8, 2),
                 head_dim=64, page_size=16, seed=0):
    """Each variant through the paged prefill wrapper on a mixed batch (a prefill, an append, a
    decode row); returns {name: (out, reference)} with reference in float64."""
    gen = torch.Generator().manual_seed(seed)
    cache, qo_indptr, kv_indptr, ids, last, q, ks, vs = paged_batch(kv_lens, qo_lens, heads, head_dim, page_size,
                                                                    dtype, device, gen)
    hq, hkv = heads
    workspace = torch.empty(64 << 20, dtype=torch.uint8, device=device)
    rows = qo_indptr.tolist()
    results = {}

    def run(variant, *args, causal_plan=True, **run_kwargs):
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, variant=variant)
        w.plan(qo_indptr, kv_indptr, ids, last, hq, hkv, head_dim, page_size, causal=causal_plan, q_data_type=dtype)
        return w.run(q, cache, *args, **run_kwargs)

    def per_request(fn):
        return torch.cat([fn(b, q[rows[b]:rows[b + 1]], ks[b], vs[b]) for b in range(len(kv_lens))])

    # FlashSigmoid with a bias of -2 (sigmoid attention's -log(n)-style offset).
    out = run(FLASH_SIGMOID, -2.0)
    ref = per_request(lambda b, qb, k, v: dense_attention(
        qb, k, v, bias=torch.full((1,), -2.0), keep=causal(len(qb), len(k), device), use_softmax=False))
    results["flash_sigmoid"] = (out, ref)

    # T5 relative-position bias from random bucket weights.
    weights = torch.randn(32, hq, generator=gen).to(device)
    table = t5_bias_table(weights)
    out = run(T5_BIAS, table)
    ref = per_request(lambda b, qb, k, v: dense_attention(
        qb, k, v, bias=weights[t5_bucket(torch.arange(len(k), device=device)[None, :]
                                         - (torch.arange(len(qb), device=device) + len(k) - len(qb))[:, None])]
        .permute(2, 0, 1), keep=causal(len(qb), len(k), device)))
    results["t5_bias"] = (out, ref)

    # Document masking: each request packs documents of random lengths (causal inside each).
    doc_lens = [random_split(n, 4, gen) for n in kv_lens]
    bounds = document_bounds_table(doc_lens)
    kv_offsets = torch.tensor([0] + torch.tensor(kv_lens).cumsum(0).tolist(), dtype=torch.int32)
    out = run(DOCUMENT_MASK, *DOCUMENT_MASK.args(doc_bounds=bounds.to(device), kv_offsets=kv_offsets.to(device)))
    offs = kv_offsets.tolist()

    def doc_ref(b, qb, k, v):
        d = bounds[offs[b]:offs[b + 1], 0].to(device)
        return dense_attention(qb, k, v, keep=causal(len(qb), len(k), device)
                               & (d[len(k) - len(qb):, None] == d[None, :]))

    results["document_mask"] = (out, per_request(doc_ref))

    # Prefix-LM: the first prefix_len[b] tokens of each request see each other both ways.
    prefix_len = torch.tensor([100, 70, 0], dtype=torch.int32)
    out = run(PREFIX_LM, prefix_len.to(device), causal_plan=False)

    def prefix_ref(b, qb, k, v):
        kv_pos = torch.arange(len(k), device=device)[None, :]
        return dense_attention(qb, k, v, keep=causal(len(qb), len(k), device) | (kv_pos < int(prefix_len[b])))

    results["prefix_lm"] = (out, per_request(prefix_ref))

    # Attention sinks (gpt-oss), FlashInfer's sink wrapper, with a sliding window of 128.
    sinks = torch.randn(hq, generator=gen).to(device) * 2
    w = flashinfer.BatchAttentionWithAttentionSinkWrapper(workspace, q_data_type=dtype, kv_data_type=dtype,
                                                          head_dim_qk=head_dim, head_dim_vo=head_dim, window_left=128)
    w.plan(qo_indptr, kv_indptr, ids, last, hq, hkv, head_dim, page_size, causal=True, window_left=128)
    out = w.run(q, cache, sinks, 1.0 / math.sqrt(head_dim))

    def sink_ref(b, qb, k, v):
        qpos = torch.arange(len(qb), device=device)[:, None] + len(k) - len(qb)
        kpos = torch.arange(len(k), device=device)[None, :]
        return dense_attention(qb, k, v, keep=(kpos <= qpos) & (kpos >= qpos - 128), sinks=sinks)

    results["sinks"] = (out, per_request(sink_ref))
    return results


def aot_configs():
    """The examples' variants compiled ahead of time (the AOT tier: cuda:90 and hip:gfx942), each at
    one problem shape: bf16 causal paged prefill, D 128."""
    from flashinfer_triton.attention.coverage import variant_aot_config

    return [variant_aot_config(FLASH_SIGMOID), variant_aot_config(T5_BIAS, (torch.float32,)),
            variant_aot_config(DOCUMENT_MASK, (torch.int32, torch.int32)),
            variant_aot_config(PREFIX_LM, (torch.int32,))]


def main() -> None:
    device = torch.device("cuda") if ON_GPU else torch.device("cpu")
    dtype = torch.bfloat16 if ON_GPU else torch.float16
    where = f"{torch.cuda.get_device_name()} in {dtype}" if ON_GPU else f"the CPU interpreter in {dtype}"
    print(f"attention variants on {where}, paged prefill of a mixed batch (prefill, append, decode rows)")
    for name, (out, ref) in run_examples(device, dtype).items():
        err = (out.double() - ref).abs().max().item() / ref.abs().max().item()
        print(f"  {name:14s} max |out - torch| / max |torch| = {err:.1e}")
        assert err < 2e-2, f"{name}: the kernel differs from the PyTorch reference"


if __name__ == "__main__":
    main()
