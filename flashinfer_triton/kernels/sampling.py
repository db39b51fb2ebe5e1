"""Sampling kernels: softmax, top-k / top-p / min-p filtering, renormalization, masking, inverse-CDF
sampling and chain speculative sampling. One program per output row; the vocabulary is streamed in
blocks of ``BLOCK``, so any vocabulary size (256k and more) works with a fixed register footprint.

No sort. Samplers (``sample_kernel``): a two-pivot rejection loop on an order-preserving integer
key of the float32 value (``_order_key``), described in the kernel's docstring; each round is one
inverse-CDF draw from the candidates (block sums, then one prefix scan of a single block) and one
counting pass. Filters (``filter_kernel``) and the ``top_k_first`` sampler need exact thresholds:
a multi-pivot bisection evaluates ``PIVOTS`` candidate keys per pass (a ``[SEARCH_BLOCK, PIVOTS]``
compare per block) and keeps the largest key whose count (top-k) or weight (top-p) of
``{key >= t}`` still reaches the target. The kept set is ``{x >= threshold}``, so ties at the
threshold are all kept (FlashInfer's pivot semantics). A token of zero weight or outside the kept
set can never be returned.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from . import AotConfig, ptr

# Software-pipelining depth of the streaming loops (tl.range num_stages): a program streams a whole
# row by itself, so without loads in flight ahead of the compute one row pass is latency-bound.
# Measured on the H100 (benchmarks/tune_sampling.py): 1 (no pipelining) is fastest; 2-4 cost 10-30%.
STREAM_STAGES = tl.constexpr(int(os.environ.get("FLASHINFER_TRITON_SAMPLING_STAGES", "1")))

# vocab size -> (BLOCK, SEARCH_BLOCK, PIVOTS, num_warps), swept by benchmarks/tune_sampling.py on the H100
# (one program streams a row, so wide blocks and 32 warps win at every batch size). Every entry is enumerated by aot_configs().
SAMPLING_TABLE = {
    1 << 62: (8192, 2048, 4, 32),
}


def hip_warps(num_warps: int) -> int:
    """AMD wavefronts have 64 lanes and a block at most 1024 threads: 16 warps at most."""
    return min(num_warps, 16)


def sampling_config(vocab_size: int, is_hip: bool = False):
    """(BLOCK, SEARCH_BLOCK, PIVOTS, num_warps) for a vocabulary size; every result is in ``aot_configs()``."""
    for limit, (block, sblock, piv, warps) in SAMPLING_TABLE.items():
        if vocab_size <= limit:
            return block, sblock, piv, hip_warps(warps) if is_hip else warps
    raise ValueError(f"vocabulary size {vocab_size} is too large")


# filter kernel modes
MODE_TOP_K_RENORM = 0
MODE_TOP_P_RENORM = 1
MODE_TOP_K_MASK = 2

NEG_INF = float("-inf")

# Reductions call tl.reduce / tl.associative_scan with Triton's own combine functions instead of
# tl.sum / tl.max / tl.min / tl.cumsum: the same code on a GPU, but the interpreter runs them in
# numpy without the ~1 ms it spends entering each nested @jit function (tl.sum is one).
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min


@triton.jit
def _order_key(x):
    """Inlined by hand in the block loops: the interpreter pays ~0.2 ms per nested jit call.
    int32 key with key(a) < key(b) iff a < b for float32 a, b (-0.0 and +0.0 share a key)."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _weight(x, m, IS_LOGITS: tl.constexpr):
    """Unnormalized probability of a value: exp(x - row max) for logits, max(x, 0) for probs."""
    if IS_LOGITS:
        return tl.exp(x - m)
    else:
        return tl.maximum(x, 0.0)


@triton.jit
def _row_stats(p_row, n, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """One pass: (min key, max key, max value, total weight). For logits the total is the online
    softmax denominator relative to the max. Per-lane accumulators, reduced once at the end."""
    o_b = tl.arange(0, BLOCK)
    b_kmin = tl.full([BLOCK], 0x7FFFFFFF, tl.int32)
    b_kmax = tl.full([BLOCK], -0x7FFFFFFF, tl.int32)
    b_m = tl.full([BLOCK], float("-inf"), tl.float32)
    b_s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(0, n, BLOCK, num_stages=STREAM_STAGES):
        o = start + o_b
        m_o = o < n
        b_x = tl.load(p_row + o, mask=m_o, other=float("-inf")).to(tl.float32)
        b_k = tl.where(b_x == 0.0, 0.0, b_x).to(tl.int32, bitcast=True)
        b_k = tl.where(b_k < 0, b_k ^ 0x7FFFFFFF, b_k)  # _order_key, inlined (see its docstring)
        b_kmin = tl.minimum(b_kmin, tl.where(m_o, b_k, 0x7FFFFFFF))
        b_kmax = tl.maximum(b_kmax, tl.where(m_o, b_k, -0x7FFFFFFF))
        if IS_LOGITS:
            b_m_new = tl.maximum(b_m, b_x)
            b_safe = tl.where(b_m_new == float("-inf"), 0.0, b_m_new)
            b_s = b_s * tl.exp(b_m - b_safe) + tl.exp(b_x - b_safe)
            b_m = b_m_new
        else:
            b_m = tl.maximum(b_m, b_x)
            b_s += tl.maximum(b_x, 0.0)
    m = tl.reduce(b_m, 0, _MAX)
    if IS_LOGITS:
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        s = tl.reduce(b_s * tl.exp(b_m - m_safe), 0, _SUM)
    else:
        s = tl.reduce(b_s, 0, _SUM)
    return tl.reduce(b_kmin, 0, _MIN).to(tl.int64), tl.reduce(b_kmax, 0, _MAX).to(tl.int64), m, s


@triton.jit
def _search(p_row, n, lo, hi, target, m, COUNT: tl.constexpr, IS_LOGITS: tl.constexpr,
            SEARCH_BLOCK: tl.constexpr, PIVOTS: tl.constexpr):
    """Largest key t in [lo, hi] with f(t) >= target, where f(t) is the count (COUNT) or the weight
    of the elements with key >= t; f is non-increasing. Returns lo when no t > lo qualifies."""
    o_p = tl.arange(0, PIVOTS).to(tl.int64)
    o_b = tl.arange(0, SEARCH_BLOCK)
    while lo < hi:
        # PIVOTS candidates in [lo + 1, hi]; when hi - lo <= PIVOTS they cover every key there.
        b_piv64 = lo + 1 + (o_p * (hi - lo)) // PIVOTS
        b_piv = b_piv64.to(tl.int32)
        if COUNT:
            b_acc = tl.zeros([PIVOTS], dtype=tl.int32)
        else:
            b_acc = tl.zeros([PIVOTS], dtype=tl.float32)
        b_above = tl.full([PIVOTS], 0x7FFFFFFF, tl.int32)  # min element key >= pivot
        b_below = tl.full([PIVOTS], -0x7FFFFFFF - 1, tl.int32)  # max element key < pivot
        for start in range(0, n, SEARCH_BLOCK):
            o = start + o_b
            m_o = o < n
            b_x = tl.load(p_row + o, mask=m_o, other=float("-inf")).to(tl.float32)
            b_k = tl.where(b_x == 0.0, 0.0, b_x).to(tl.int32, bitcast=True)
            b_k = tl.where(b_k < 0, b_k ^ 0x7FFFFFFF, b_k)  # _order_key, inlined (see its docstring)
            b_ge = (b_k[:, None] >= b_piv[None, :]) & m_o[:, None]
            b_lt = (b_k[:, None] < b_piv[None, :]) & m_o[:, None]
            b_above = tl.minimum(b_above, tl.reduce(tl.where(b_ge, b_k[:, None], 0x7FFFFFFF), 0, _MIN))
            b_below = tl.maximum(b_below, tl.reduce(tl.where(b_lt, b_k[:, None], -0x7FFFFFFF - 1), 0, _MAX))
            if COUNT:
                b_acc += tl.reduce(b_ge.to(tl.int32), 0, _SUM)
            else:
                if IS_LOGITS:  # _weight, inlined
                    b_w = tl.exp(b_x - m)
                else:
                    b_w = tl.maximum(b_x, 0.0)
                b_acc += tl.reduce(tl.where(b_ge, b_w[:, None], 0.0), 0, _SUM)
        # f is a step function of the element keys: snap lo up to the smallest element key >= the
        # best passing pivot and hi down to the largest element key below the first failing one
        # (FlashInfer's min_gt_low / max_le_high), so the loop ends once one distinct key is left.
        b_ok = (b_acc >= target) & (b_acc > 0)  # > 0: top_p = 0 still keeps the largest value
        new_lo = tl.reduce(tl.where(b_ok, b_piv64, lo), 0, _MAX)
        new_hi = tl.reduce(tl.where(b_ok, hi, b_piv64 - 1), 0, _MIN)
        snap_lo = tl.reduce(tl.where(b_ok & (b_piv64 == new_lo), b_above.to(tl.int64), 0x7FFFFFFF), 0, _MIN)
        snap_hi = tl.reduce(tl.where((b_ok == 0) & (b_piv64 == new_hi + 1), b_below.to(tl.int64), -0x7FFFFFFF - 1), 0, _MAX)
        lo = tl.where(snap_lo < 0x7FFFFFFF, snap_lo, new_lo)
        hi = tl.where(snap_hi > -0x7FFFFFFF - 1, snap_hi, new_hi)
    return lo


@triton.jit
def _kept_weights(p_row, start, n, thr, m, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """(offsets, weights) of one block, weight 0 outside the kept set {key >= thr}."""
    o = start + tl.arange(0, BLOCK)
    m_o = o < n
    b_x = tl.load(p_row + o, mask=m_o, other=float("-inf")).to(tl.float32)
    b_k = tl.where(b_x == 0.0, 0.0, b_x).to(tl.int32, bitcast=True)
    b_k = tl.where(b_k < 0, b_k ^ 0x7FFFFFFF, b_k)  # _order_key, inlined (see its docstring)
    if IS_LOGITS:  # _weight, inlined
        b_w = tl.exp(b_x - m)
    else:
        b_w = tl.maximum(b_x, 0.0)
    return o, tl.where(m_o & (b_k >= thr) & (b_w > 0.0), b_w, 0.0)


@triton.jit
def _mass_above(p_row, n, thr, m, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """Total weight of the elements with key >= thr."""
    b_s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(0, n, BLOCK, num_stages=STREAM_STAGES):
        _, b_w = _kept_weights(p_row, start, n, thr, m, IS_LOGITS, BLOCK)
        b_s += b_w
    return tl.reduce(b_s, 0, _SUM)


@triton.jit
def _pick(p_row, n, thr, m, target, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """First index with key >= thr and positive weight whose inclusive prefix weight exceeds
    target; the last such index if rounding leaves none; -1 for a row without positive weight.

    Two levels: block sums (one reduction per block) find the block where the running weight
    passes target, and only that block is prefix-scanned (a scan costs several reductions)."""
    run = 0.0
    hit = -1  # start of the block where the running weight passes target
    hit_run = 0.0
    last = -1  # start of the last block with positive weight, in case rounding passes none
    last_run = 0.0
    start = 0
    while (start < n) & (hit < 0):
        o, b_w = _kept_weights(p_row, start, n, thr, m, IS_LOGITS, BLOCK)
        s = tl.reduce(b_w, 0, _SUM)
        hit = tl.where(run + s > target, start, -1)
        hit_run = tl.where(run + s > target, run, hit_run)
        last = tl.where(s > 0.0, start, last)
        last_run = tl.where(s > 0.0, run, last_run)
        run += s
        start += BLOCK
    blk = tl.where(hit >= 0, hit, last)
    res = -1
    if blk >= 0:
        o, b_w = _kept_weights(p_row, blk, n, thr, m, IS_LOGITS, BLOCK)
        b_c = tl.associative_scan(b_w, 0, _SUM) + tl.where(hit >= 0, hit_run, last_run)
        first = tl.reduce(tl.where((b_w > 0.0) & (b_c > target), o, 0x7FFFFFFF), 0, _MIN)
        res = tl.where(first < 0x7FFFFFFF, first, tl.reduce(tl.where(b_w > 0.0, o, -1), 0, _MAX))
    return res


@triton.jit
def _weights_above(p_row, n, t0, t1, m, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """One pass: (count, weight) of the elements with key > t0 and with key > t1. Per-lane
    accumulators, reduced once at the end (no cross-warp reduction inside the loop)."""
    o_b = tl.arange(0, BLOCK)
    b_c0 = tl.zeros([BLOCK], dtype=tl.int32)
    b_c1 = tl.zeros([BLOCK], dtype=tl.int32)
    b_w0 = tl.zeros([BLOCK], dtype=tl.float32)
    b_w1 = tl.zeros([BLOCK], dtype=tl.float32)
    for start in tl.range(0, n, BLOCK, num_stages=STREAM_STAGES):
        o = start + o_b
        m_o = o < n
        b_x = tl.load(p_row + o, mask=m_o, other=float("-inf")).to(tl.float32)
        b_k = tl.where(b_x == 0.0, 0.0, b_x).to(tl.int32, bitcast=True)
        b_k = tl.where(b_k < 0, b_k ^ 0x7FFFFFFF, b_k)  # _order_key, inlined (see its docstring)
        if IS_LOGITS:  # _weight, inlined
            b_w = tl.exp(b_x - m)
        else:
            b_w = tl.maximum(b_x, 0.0)
        b_gt0 = m_o & (b_k > t0)
        b_gt1 = m_o & (b_k > t1)
        b_c0 += b_gt0.to(tl.int32)
        b_c1 += b_gt1.to(tl.int32)
        b_w0 += tl.where(b_gt0, b_w, 0.0)
        b_w1 += tl.where(b_gt1, b_w, 0.0)
    return (tl.reduce(b_c0, 0, _SUM), tl.reduce(b_w0, 0, _SUM),
            tl.reduce(b_c1, 0, _SUM), tl.reduce(b_w1, 0, _SUM))


@triton.jit(do_not_specialize=["n", "top_k_val", "top_p_val", "min_p_val", "k_mode", "p_mode", "minp_mode",
                               "joint"])
def sample_kernel(
    p_x, p_idx, p_topk, p_topp, p_minp, p_u, p_out, p_valid,
    stride_x, n,
    top_k_val, top_p_val, min_p_val,
    k_mode, p_mode, minp_mode, joint,
    HAS_INDICES: tl.constexpr, IS_LOGITS: tl.constexpr,
    BLOCK: tl.constexpr, SEARCH_BLOCK: tl.constexpr, PIVOTS: tl.constexpr,
):
    """out[i] = a sample from row ``indices[i]`` (or i) of x restricted to the kept set S.

    ``*_mode``: 0 filter off, 1 scalar value, 2 per-output array. S = {key >= s*}: the top-k set
    (``count(key > v) < k``), the top-p set (``weight(key > v) < top_p * base``, or 0), the min-p
    set (``w >= min_p * max w``), intersected. base = total weight for logits, 1 for probs; with
    top-k on and ``joint == 0`` (FlashInfer's "top_k_first") the top-k threshold is searched
    exactly first and top-p is taken relative to the top-k mass. valid[i] = kept weight > 0.

    Rejection with two pivots (FlashInfer's scheme, on order keys): sample j from the candidates
    C = {key >= lo} (C always contains S), then one pass counts (weight, count) above key(j) and
    above the midpoint pivot p1 of (key(j), hi]. j in S: done (a sample from C conditioned on S
    is a sample from S). Otherwise every key <= key(j) is out, and p1 either moves lo past it or
    becomes the new upper bound hi of s*; [lo, hi] halves per rejected round, so a row ends in
    at most ~32 rounds and usually in 1-3. Round r > 0 draws its uniform with Philox from a seed
    given per row (u[i, 1]), so a row's result depends only on its two uniforms."""
    top_p_val = tl.cast(top_p_val, tl.float32)
    min_p_val = tl.cast(min_p_val, tl.float32)
    pid = tl.program_id(0)
    if HAS_INDICES:
        row = tl.load(p_idx + pid).to(tl.int64)
    else:
        row = pid.to(tl.int64)
    p_row = p_x + row * stride_x
    k = top_k_val
    if k_mode == 2:
        k = tl.load(p_topk + pid)
    k_on = (k_mode != 0) & (k > 0) & (k < n)
    tp = top_p_val
    if p_mode == 2:
        tp = tl.load(p_topp + pid).to(tl.float32)
    p_on = (p_mode != 0) & (tp < 1.0)
    k_first = k_on & p_on & (joint == 0)
    # One statistics pass: the exact total (unnormalized rows sample correctly) and the max key,
    # the first upper bound of the threshold (measured: cheaper than the extra rounds without it).
    key_lo, key_hi, m, total = _row_stats(p_row, n, IS_LOGITS, BLOCK)
    target = tp * tl.where(IS_LOGITS, total, 1.0)
    lo = key_lo
    if k_first:
        # "top_k_first": top-p over the renormalized top-k set, so the top-k mass is needed first
        lo = _search(p_row, n, key_lo, key_hi, k, m, True, IS_LOGITS, SEARCH_BLOCK, PIVOTS)
        target = tp * _mass_above(p_row, n, lo, m, IS_LOGITS, BLOCK)
    k_on = k_on & (k_first == 0)
    if minp_mode != 0:
        mp = min_p_val
        if minp_mode == 2:
            mp = tl.load(p_minp + pid).to(tl.float32)
        lo = tl.maximum(lo, _order_key(mp * _weight(m, m, IS_LOGITS)).to(tl.int64))
    if lo == key_lo:
        mass = total
    else:
        mass = _mass_above(p_row, n, lo, m, IS_LOGITS, BLOCK)
    u = tl.load(p_u + pid * 2).to(tl.float32)
    seed = tl.load(p_u + pid * 2 + 1).to(tl.int32, bitcast=True)
    res = _pick(p_row, n, lo, m, u * mass, IS_LOGITS, BLOCK)
    valid = (res >= 0) & (mass > 0.0)
    hi = key_hi
    rnd = 0
    done = ((valid == 0) | ((k_on == 0) & (p_on == 0))).to(tl.int32)
    while done == 0:
        xv = tl.load(p_row + res).to(tl.float32)
        v = tl.where(xv == 0.0, 0.0, xv).to(tl.int32, bitcast=True)
        v = tl.where(v < 0, v ^ 0x7FFFFFFF, v).to(tl.int64)  # _order_key, inlined
        p1 = v + 1 + ((hi - v - 1) >> 1)  # hi > v whenever v is out (v < s* <= hi)
        c0, w0, c1, w1 = _weights_above(p_row, n, v, p1, m, IS_LOGITS, BLOCK)
        out0 = (k_on & (c0 >= k)) | (p_on & (w0 >= target) & (w0 > 0.0))
        if out0:
            out1 = (k_on & (c1 >= k)) | (p_on & (w1 >= target) & (w1 > 0.0))
            if out1:
                lo = p1 + 1
                mass = w1
            else:
                lo = v + 1
                hi = p1
                mass = w0
            rnd += 1
            u = tl.rand(seed, rnd)
            res = _pick(p_row, n, lo, m, u * mass, IS_LOGITS, BLOCK)
        else:
            done = 1
    tl.store(p_out + pid, tl.maximum(res, 0).to(p_out.dtype.element_ty))
    tl.store(p_valid + pid, valid)


@triton.jit(do_not_specialize=["n", "top_k_val", "top_p_val", "k_mode", "p_mode"])
def filter_kernel(
    p_x, p_out, p_topk, p_topp,
    stride_x, stride_o, n,
    top_k_val, top_p_val, k_mode, p_mode,
    MODE: tl.constexpr, BLOCK: tl.constexpr, SEARCH_BLOCK: tl.constexpr, PIVOTS: tl.constexpr,
):
    """MODE 0 (top-k renorm) / 1 (top-p renorm): out = x / kept mass where key(x) >= thr, else 0.
    MODE 2 (top-k mask): out = x where key(x) >= thr, else -inf. ``*_mode`` as in sample_kernel."""
    IS_LOGITS: tl.constexpr = MODE == 2
    top_p_val = tl.cast(top_p_val, tl.float32)
    pid = tl.program_id(0)
    p_row = p_x + pid.to(tl.int64) * stride_x
    p_orow = p_out + pid.to(tl.int64) * stride_o
    key_lo, key_hi, m, total = _row_stats(p_row, n, IS_LOGITS, BLOCK)
    thr = key_lo
    if MODE == 1:
        tp = top_p_val
        if p_mode == 2:
            tp = tl.load(p_topp + pid).to(tl.float32)
        if tp < 1.0:
            thr = _search(p_row, n, key_lo, key_hi, tp, m, False, False, SEARCH_BLOCK, PIVOTS)
    else:
        k = top_k_val
        if k_mode == 2:
            k = tl.load(p_topk + pid)
        if (k > 0) & (k < n):
            thr = _search(p_row, n, key_lo, key_hi, k, m, True, IS_LOGITS, SEARCH_BLOCK, PIVOTS)
    if MODE != 2:
        if thr == key_lo:
            s = total
        else:
            s = _mass_above(p_row, n, thr, m, False, BLOCK)
        inv = tl.where(s > 0.0, 1.0 / s, 0.0)
    o_b = tl.arange(0, BLOCK)
    for start in range(0, n, BLOCK):
        o = start + o_b
        m_o = o < n
        b_x = tl.load(p_row + o, mask=m_o, other=0.0).to(tl.float32)
        b_k = tl.where(b_x == 0.0, 0.0, b_x).to(tl.int32, bitcast=True)
        b_k = tl.where(b_k < 0, b_k ^ 0x7FFFFFFF, b_k)  # _order_key, inlined (see its docstring)
        b_keep = b_k >= thr
        if MODE == 2:
            b_y = tl.where(b_keep, b_x, float("-inf"))
        else:
            b_y = tl.where(b_keep, tl.maximum(b_x, 0.0) * inv, 0.0)
        tl.store(p_orow + o, b_y.to(p_out.dtype.element_ty), mask=m_o)


@triton.jit(do_not_specialize=["n", "temp_val", "temp_mode"])
def softmax_kernel(
    p_x, p_out, p_temp, stride_x, stride_o, n, temp_val, temp_mode,
    BLOCK: tl.constexpr,
):
    """out = softmax(x / T) in float32; temp_mode 0: T = 1, 1: T = temp_val, 2: T = temp[row]."""
    temp_val = tl.cast(temp_val, tl.float32)
    pid = tl.program_id(0)
    p_row = p_x + pid.to(tl.int64) * stride_x
    p_orow = p_out + pid.to(tl.int64) * stride_o
    t = tl.where(temp_mode == 1, temp_val, 1.0)
    if temp_mode == 2:
        t = tl.load(p_temp + pid).to(tl.float32)
    inv_t = 1.0 / t
    o_b = tl.arange(0, BLOCK)
    m = float("-inf")
    s = 0.0
    for start in range(0, n, BLOCK):
        o = start + o_b
        b_x = tl.load(p_row + o, mask=o < n, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, tl.reduce(b_x, 0, _MAX))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.reduce(tl.exp(b_x - m_safe), 0, _SUM)
        m = m_new
    inv_s = 1.0 / s
    for start in range(0, n, BLOCK):
        o = start + o_b
        m_o = o < n
        b_x = tl.load(p_row + o, mask=m_o, other=float("-inf")).to(tl.float32) * inv_t
        tl.store(p_orow + o, tl.exp(b_x - m) * inv_s, mask=m_o)


@triton.jit(do_not_specialize=["num_spec", "n"])
def chain_speculative_kernel(
    p_draft, p_ids, p_target, p_u, p_out, p_acc, p_emit,
    num_spec, n,
    BLOCK: tl.constexpr,
):
    """One row: accept draft token i while u_i * draft[i, id] < target[i, id]; at the first
    rejection pos, sample from relu(target[pos] - draft[pos]) (or, all accepted, from
    target[num_spec]) with u_num_spec; out = accepted ids, the sample, then -1. acc += number of
    positions passing the test independently; emit += pos."""
    pid = tl.program_id(0).to(tl.int64)
    n64 = n.to(tl.int64)
    p_d = p_draft + pid * num_spec * n64
    p_t = p_target + pid * (num_spec + 1) * n64
    p_i = p_ids + pid * num_spec
    p_uu = p_u + pid * (num_spec + 1)
    p_o = p_out + pid * (num_spec + 1)
    pos = num_spec
    accepted = 0
    for i in range(0, num_spec):
        tok = tl.load(p_i + i).to(tl.int64)
        q = tl.load(p_t + i * n64 + tok).to(tl.float32)
        p = tl.load(p_d + i * n64 + tok).to(tl.float32)
        u = tl.load(p_uu + i)
        ok = u * p < q
        accepted += ok.to(tl.int32)
        pos = tl.where((ok == 0) & (pos == num_spec), i, pos)
        tl.store(p_o + i, tl.where(i < pos, tok, -1).to(tl.int32))
    tl.store(p_acc + pid, tl.load(p_acc + pid) + accepted)
    tl.store(p_emit + pid, tl.load(p_emit + pid) + pos)
    tl.store(p_o + num_spec, -1)
    # sample the token at pos (overwrites the -1 above when every draft token was accepted)
    o_b = tl.arange(0, BLOCK)
    p_trow = p_t + pos.to(tl.int64) * n64
    p_drow = p_d + pos.to(tl.int64) * n64
    resid = pos < num_spec
    b_s = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        o = start + o_b
        m_o = o < n
        b_w = tl.load(p_trow + o, mask=m_o, other=0.0).to(tl.float32)
        if resid:
            b_w = b_w - tl.load(p_drow + o, mask=m_o, other=0.0).to(tl.float32)
        b_s += tl.maximum(b_w, 0.0)
    total = tl.reduce(b_s, 0, _SUM)
    target = tl.load(p_uu + num_spec) * total
    run = 0.0
    found = -1
    last = -1
    start = 0
    while (start < n) & (found < 0):
        o = start + o_b
        m_o = o < n
        b_w = tl.load(p_trow + o, mask=m_o, other=0.0).to(tl.float32)
        if resid:
            b_w = b_w - tl.load(p_drow + o, mask=m_o, other=0.0).to(tl.float32)
        b_w = tl.where(m_o, tl.maximum(b_w, 0.0), 0.0)
        b_keep = b_w > 0.0
        b_c = tl.associative_scan(b_w, 0, _SUM) + run
        first = tl.reduce(tl.where(b_keep & (b_c > target), o, 0x7FFFFFFF), 0, _MIN)
        found = tl.where(first < 0x7FFFFFFF, first, -1)
        last = tl.maximum(last, tl.reduce(tl.where(b_keep, o, -1), 0, _MAX))
        run += tl.reduce(b_w, 0, _SUM)
        start += BLOCK
    res = tl.maximum(tl.where(found >= 0, found, last), 0)
    tl.store(p_o + pos, res.to(tl.int32))


@triton.jit
def philox_uniform_kernel(
    p_seed, p_off, p_u, seed_val, off_val, seed_stride, off_stride, per_row,
    SEED_ARR: tl.constexpr, OFF_ARR: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """u[row, j] = Philox(seed_row, offset_row + row * per_row + j) in [0, 1), j < per_row."""
    pid = tl.program_id(0)
    if SEED_ARR:
        seed = tl.load(p_seed + pid * seed_stride)
    else:
        seed = seed_val
    if OFF_ARR:
        off = tl.load(p_off + pid * off_stride)
    else:
        off = off_val
    o = tl.arange(0, BLOCK_R)
    r = tl.rand(seed, (off + pid.to(tl.int64) * per_row + o).to(tl.uint64))
    tl.store(p_u + pid.to(tl.int64) * per_row + o, r, mask=o < per_row)


def _sig(**kw):
    return dict(kw)


def aot_configs():
    import torch

    cfgs = []
    for _, (block, sblock, piv, warps) in SAMPLING_TABLE.items():
        c = dict(BLOCK=block, SEARCH_BLOCK=sblock, PIVOTS=piv)
        x_variants = [(torch.float32, False), (torch.float16, True), (torch.bfloat16, True), (torch.float32, True)]
        for xdt, is_logits in x_variants:
            for has_idx, idt in ((False, torch.int32), (True, torch.int32), (True, torch.int64)):
                sig = _sig(p_x=ptr(xdt), p_idx=ptr(idt), p_topk="*i32", p_topp="*fp32", p_minp="*fp32",
                           p_u="*fp32", p_out=ptr(idt), p_valid="*i1", stride_x="i64", n="i32",
                           top_k_val="i32", top_p_val="fp32", min_p_val="fp32", k_mode="i32", p_mode="i32",
                           minp_mode="i32", joint="i32", HAS_INDICES="constexpr", IS_LOGITS="constexpr",
                           BLOCK="constexpr", SEARCH_BLOCK="constexpr", PIVOTS="constexpr")
                cfgs.append(AotConfig(sample_kernel, sig, dict(HAS_INDICES=has_idx, IS_LOGITS=is_logits, **c),
                                      num_warps=warps, hip_num_warps=hip_warps(warps),
                                      name=f"sampling_sample_{'logits' if is_logits else 'probs'}_{xdt}_{idt if has_idx else 'noidx'}_{block}"))
        for mode, dts in ((MODE_TOP_K_RENORM, (torch.float32, torch.float16, torch.bfloat16)),
                          (MODE_TOP_P_RENORM, (torch.float32,)),
                          (MODE_TOP_K_MASK, (torch.float32, torch.float16, torch.bfloat16))):
            for dt in dts:
                sig = _sig(p_x=ptr(dt), p_out=ptr(dt), p_topk="*i32", p_topp="*fp32", stride_x="i64",
                           stride_o="i64", n="i32", top_k_val="i32", top_p_val="fp32", k_mode="i32",
                           p_mode="i32", MODE="constexpr", BLOCK="constexpr", SEARCH_BLOCK="constexpr",
                           PIVOTS="constexpr")
                cfgs.append(AotConfig(filter_kernel, sig, dict(MODE=mode, **c), num_warps=warps, hip_num_warps=hip_warps(warps),
                                      name=f"sampling_filter_mode{mode}_{dt}_{block}"))
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            sig = _sig(p_x=ptr(dt), p_out="*fp32", p_temp="*fp32", stride_x="i64", stride_o="i64", n="i32",
                       temp_val="fp32", temp_mode="i32", BLOCK="constexpr")
            cfgs.append(AotConfig(softmax_kernel, sig, dict(BLOCK=block), num_warps=warps, hip_num_warps=hip_warps(warps),
                                  name=f"sampling_softmax_{dt}_{block}"))
        sig = _sig(p_draft="*fp32", p_ids="*i32", p_target="*fp32", p_u="*fp32", p_out="*i32", p_acc="*i32",
                   p_emit="*i32", num_spec="i32", n="i32", BLOCK="constexpr")
        cfgs.append(AotConfig(chain_speculative_kernel, sig, dict(BLOCK=block), num_warps=warps, hip_num_warps=hip_warps(warps),
                              name=f"sampling_chain_speculative_{block}"))
    for seed_arr in (False, True):
        for off_arr in (False, True):
            sig = _sig(p_seed="*i64", p_off="*i64", p_u="*fp32", seed_val="i64", off_val="i64", seed_stride="i32",
                       off_stride="i32", per_row="i32", SEED_ARR="constexpr", OFF_ARR="constexpr",
                       BLOCK_R="constexpr")
            for br in PHILOX_BLOCKS:
                cfgs.append(AotConfig(philox_uniform_kernel, sig, dict(SEED_ARR=seed_arr, OFF_ARR=off_arr,
                                                                       BLOCK_R=br), num_warps=1,
                                      name=f"sampling_philox_uniform_{int(seed_arr)}{int(off_arr)}_{br}"))
    return cfgs


# uniforms per row -> BLOCK_R: 1 for plain sampling, up to num_speculate_tokens + 1 <= 64 otherwise
PHILOX_BLOCKS = (1, 16, 64)


def philox_block(per_row: int) -> int:
    for b in PHILOX_BLOCKS:
        if per_row <= b:
            return b
    raise NotImplementedError(f"num_speculate_tokens + 1 = {per_row} > {PHILOX_BLOCKS[-1]} with explicit seed/offset")
