"""Sampling kernels: samplers, renorm/mask filters and top-k selection on one kept-set machinery;
softmax; chain speculative sampling.

Every filter keeps ``S = {x : key(x) >= s*}`` for one threshold key ``s*`` (``_key`` is an
order-preserving int32 image of the float32 value, so ties at the threshold are all kept, as in
FlashInfer). Finding ``s*`` and drawing from ``S`` takes two launches, whatever the batch size:

1. ``sample_pass_kernel``, grid ``(row groups, SPLIT)``: SPLIT programs share a row, each streams
   one chunk once. Each first estimates a bracket ``[t_lo, t_hi)`` around ``s*`` from a fixed
   sample of the row (16 spread segments, the same for every program of the row, so every program
   computes the same bracket): a histogram of the sample over log-weight bins gives the sample's
   counts and weights above each bin edge, and Poisson margins turn the sample's top-k rank /
   top-p mass into row bounds (rows that fit whole are collected whole). While streaming
   its chunk the program computes the row statistics (min/max key, max value, total weight with an
   online softmax for logits), the count and weight at or above ``t_lo`` and ``t_hi``, and writes
   the elements inside the bracket (key and index) to its own candidate region. Filters also write
   their speculative output here (mask: ``x`` or ``-inf`` around ``t_lo``; renorm: zeros).
2. ``sample_resolve_kernel``, one program per row group: combines the chunk partials, gathers the
   candidates (at most ``CAP``) into registers and finds ``s*`` exactly among them with a
   multi-pivot bisection on keys that snaps to element keys (the counts/weights above ``t_hi`` are
   offsets). Samplers then draw by inverse CDF from the candidates (or, when ``S`` reaches above
   ``t_hi``, by a streaming pick over the one chunk where the kept weight, known per chunk from
   the partials and the candidates, passes the draw); filters fix up the candidates' outputs by scatter or rewrite
   the row (``filter_apply_kernel`` splits the renorm's rewrite when SPLIT > 1; the mask rewrites
   a row only on the fallback, in the resolve kernel).
   When the bracket held ``s*`` but more than ``CAP`` candidates (a flat distribution: many
   entries near the threshold, e.g. top-p 0.9 over a 256k vocabulary) and the pass stored them all
   (2 ``CAP`` slots per chunk), one filter's ``s*`` is found by the bisection streamed over the
   stored candidates. When the bracket missed ``s*`` or overflowed, the same program finds ``s*``
   by the bisection streamed over the whole row (exact, slower, rare).

So a sampler reads its input once and a filter reads it once and writes it once in the common
case. ``sample_direct_kernel`` is plain ``sampling_from_probs`` for large batches: one pass that
stops at the sample. Every kernel handles ``ROWS`` output rows per program as the leading block
dimension (ROWS > 1 for tiny vocabularies: one program then handles many draws, which is what
makes statistical tests affordable in the CPU interpreter). Randomness is one uniform per output
row, read from a tensor (``torch.rand`` from a generator) or computed in the kernel by Philox from
``(seed, offset)`` read from device memory, so CUDA-graph replays with new offsets draw anew.
All reductions run in a fixed order: results are deterministic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import triton
import triton.language as tl

from . import AotConfig, kernel_parameters, ptr

KEY_MIN = -(2**31)
KEY_MAX = 2**31 - 1

# op codes of sample_pass_kernel / sample_resolve_kernel
OP_SAMPLE = 0  # a sampler (top-k / top-p / min-p / plain; probs or logits)
OP_RENORM = 1  # top_k_renorm_probs (k criterion) or top_p_renorm_probs (p criterion)
OP_MASK = 2  # top_k_mask_logits
OP_TOPK = 3  # top_k selection: values and indices of the k largest

# per-row path of the resolve kernel, recorded in its state (tests and benchmark diagnostics)
PATH_NONE = 0  # no filter
PATH_CANDIDATES = 1  # the kept set was collected whole: resolved and drawn / fixed up from the candidates
PATH_BRACKET = 2  # the threshold was in the bracket; the kept set is streamed (pick pass / row rewrite)
PATH_FALLBACK = 3  # the bracket missed or overflowed: the threshold was searched over the whole row
PATH_STORED = 4  # the bracket held the threshold but more than CAP candidates, all stored by the pass:
#                  the threshold was searched over them, the kept set is streamed (one filter: k or p)
NUM_STATE = 4  # resolve state per row: rewrite the row (filters), threshold, 1 / mass (bits), path

NUM_IPART = 6  # int partials per (row, chunk): kmin, kmax, count >= t_lo, count >= t_hi, t_lo, t_hi
NUM_FPART = 4  # float partials: max value, total weight, weight >= t_lo, weight >= t_hi (relative to the max)

# the same constants for @triton.jit code (globals there must be constexpr)
_KEY_MIN = tl.constexpr(KEY_MIN)
_KEY_MAX = tl.constexpr(KEY_MAX)
_OP_SAMPLE = tl.constexpr(OP_SAMPLE)
_OP_RENORM = tl.constexpr(OP_RENORM)
_OP_MASK = tl.constexpr(OP_MASK)
_OP_TOPK = tl.constexpr(OP_TOPK)
_NUM_IPART = tl.constexpr(NUM_IPART)
_NUM_STATE = tl.constexpr(NUM_STATE)
_NUM_FPART = tl.constexpr(NUM_FPART)
_PATH_STORED = tl.constexpr(PATH_STORED)

# Reductions call tl.reduce / tl.associative_scan with Triton's own combine functions instead of
# tl.sum / tl.max / tl.min / tl.cumsum: the same code on a GPU, but the interpreter runs them in
# numpy without the ~1 ms it spends entering each nested @jit function (tl.sum is one).
_SUM = tl.standard._sum_combine
_MAX = tl.standard._elementwise_max
_MIN = tl.standard._elementwise_min


@dataclass(frozen=True)
class SamplingConfig:
    """Constexpr shape of the sampling kernels. ``rows``: output rows per program; ``block``:
    streaming width; ``cap``: candidates per row resolved in registers; ``sample``/``bins``: the
    bracket estimate's sample size and histogram bins; ``pivots``: bisection pivots per step;
    ``split_max``: most programs per row; ``search_block``: tile width of the fallback bisection
    streamed over a row (a [rows, search_block, pivots] compare); ``warps``/``resolve_warps``:
    warps of the streaming kernels / of the resolve kernel; ``stages``: software pipelining of
    the streaming loops; ``direct_block``: streaming width of ``sample_direct_kernel`` (its loop
    stops at the sample, so a wider block keeps more bytes in flight for at most one block of
    overshoot a row)."""

    rows: int
    block: int
    search_block: int
    cap: int
    sample: int
    bins: int
    pivots: int
    split_max: int
    warps: int
    resolve_warps: int
    stages: int
    direct_block: int

    @property
    def name(self) -> str:
        return f"r{self.rows}b{self.block}c{self.cap}"


# vocab size -> config. The large entry is derived from the H100 sweep of the previous sampler
# (8192-wide blocks with 32 warps streamed one row per SM fastest; with rows split over programs
# a chunk is a few blocks, so 2048-wide blocks with 8 warps keep the same bytes in flight per SM)
# and from the architecture (a [1, 4096] candidate block with 8 bisection pivots is 128 values per
# thread at 8 warps): derived from the H100 sweep / architecture. stages=3 (the pass kernel's
# stream software-pipelined, three 8 KB blocks in flight a program where one program of 204
# registers a thread fits an SM) from benchmarks/results/tune/sampling-nvidia-h200.json (H200,
# 2026-12-02, 9 ops x batch 1..512 x split 1..16): 1.21x geometric mean over the default
# (stages=1), 1.34x at batch >= 256; stages=2 1.21x, block 1024 with 3 stages 1.20x, direct_block
# 4096 / 8192 1.00x / 0.98x (so 2048 stays).
# The tiny entry (vocabularies up to 32, 16 draws a program) serves many draws from small
# distributions; default, not yet measured. The CPU interpreter pays per operation, not per
# element, so it gets the tiny entry with 2048 rows a program (what makes the statistical tests of
# the CPU tier affordable); no GPU launch picks it, so it is not an AOT configuration.
TINY_VOCAB = 32
TINY = SamplingConfig(rows=16, block=32, search_block=32, cap=32, sample=32, bins=16, pivots=8, split_max=1, warps=4,
                      resolve_warps=4, stages=1, direct_block=32)
TINY_INTERPRETER = dataclasses.replace(TINY, rows=2048)
# configs of several rows a program skip the bracket estimate: every row must fit whole
assert TINY_VOCAB <= min(TINY.sample, TINY.cap)
LARGE = SamplingConfig(rows=1, block=2048, search_block=256, cap=4096, sample=4096, bins=256, pivots=8, split_max=16,
                       warps=8, resolve_warps=8, stages=3, direct_block=2048)

# Programs per compute unit that the split aims for (two keeps each SM busy while the other
# program waits on memory); default, not yet measured.
PROGRAMS_PER_CU = 2
# Plain sampling from probabilities takes the one-pass direct kernel (one program a row group,
# stopping at the sample) from this many row groups per compute unit, instead of the split pass and
# resolve (which read the whole row, then rescan a chunk). H200, vocab 128256, float32: the split
# path took 264 us at batch 256 (split 8: 2048 pass programs, then 256 resolve programs), the
# direct kernel 105 us at batch 512 (split_for's own switch point, 2 groups a compute unit), so at
# 256 rows, half those programs, it is no slower; below one group per compute unit the direct
# kernel leaves compute units idle and the split path wins (batch 64: 95 us).
DIRECT_MIN_GROUPS_PER_CU = 1
# Plain sampling from logits draws by rescanning the chunk where the running total passes u: at
# least this many programs a row keep that rescan to 1/8 of a row; default, not yet measured.
PLAIN_LOGITS_MIN_SPLIT = 8


def hip_warps(num_warps: int) -> int:
    """AMD wavefronts have 64 lanes and a block at most 1024 threads: 16 warps at most."""
    return min(num_warps, 16)


def sampling_config(vocab_size: int, tiny_ok: bool = True, interpreter: bool = False) -> SamplingConfig:
    """The config for a vocabulary size; ``tiny_ok`` False for the ops without a tiny variant
    (filters, top_k, softmax). Every result on a GPU is in ``aot_configs()``."""
    if tiny_ok and vocab_size <= TINY_VOCAB:
        return TINY_INTERPRETER if interpreter else TINY
    return LARGE


def split_for(batch: int, vocab_size: int, compute_units: int, cfg: SamplingConfig, split=None):
    """(programs per row, chunk length): enough programs for ``PROGRAMS_PER_CU`` per compute
    unit, at most ``cfg.split_max``, every chunk a whole number of blocks; ``split`` overrides
    the count (tuning)."""
    if split is None:
        groups = -(-batch // cfg.rows)
        split = -(-PROGRAMS_PER_CU * compute_units // max(groups, 1))
    elif not 1 <= split <= cfg.split_max:
        raise ValueError(f"split: expected 1..{cfg.split_max} for this config, got {split}")
    split = max(1, min(cfg.split_max, split, -(-vocab_size // cfg.block)))
    chunk = -(-(-(-vocab_size // split)) // cfg.block) * cfg.block
    return -(-vocab_size // chunk), chunk


# ---------------------------------------------------------------------------------------------
# jit helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _key(x):
    """int32 key with key(a) < key(b) iff a < b for float32 a, b (-0.0 and +0.0 share a key)."""
    x = tl.where(x == 0.0, 0.0, x)
    b = x.to(tl.int32, bitcast=True)
    return tl.where(b < 0, b ^ 0x7FFFFFFF, b)


@triton.jit
def _value(k):
    """float32 value of a key (inverse of ``_key``; -0.0 comes back as +0.0)."""
    return tl.where(k < 0, k ^ 0x7FFFFFFF, k).to(tl.float32, bitcast=True)


@triton.jit
def _weight(x, m, IS_LOGITS: tl.constexpr):
    """Unnormalized probability: exp(x - m) for logits (m: the row max), max(x, 0) for probs."""
    if IS_LOGITS:
        return tl.exp(x - m)
    else:
        return tl.maximum(x, 0.0)


@triton.jit
def _row_params(o_r, m_r, n, p_topk, p_topp, p_minp, top_k_val, top_p_val, min_p_val, mode_k, mode_p, mode_m):
    """Per-row (k, top_p, min_p) and which filters are on. ``mode_*``: 0 off, 1 scalar, 2 per row."""
    k = tl.full(o_r.shape, 0, tl.int32) + top_k_val
    if mode_k == 2:
        k = tl.load(p_topk + o_r, mask=m_r, other=0)
    tp = tl.full(o_r.shape, 0.0, tl.float32) + top_p_val
    if mode_p == 2:
        tp = tl.load(p_topp + o_r, mask=m_r, other=1.0).to(tl.float32)
    mp = tl.full(o_r.shape, 0.0, tl.float32) + min_p_val
    if mode_m == 2:
        mp = tl.load(p_minp + o_r, mask=m_r, other=0.0).to(tl.float32)
    # scalar flags become row tensors first (the interpreter's tensor & scalar-bool is int32)
    zero = o_r * 0
    k_on = m_r & ((zero + mode_k) != 0) & (k > 0) & (k < n)
    p_on = m_r & ((zero + mode_p) != 0) & (tp < 1.0)
    m_on = m_r & ((zero + mode_m) != 0) & (mp > 0.0)
    return k, tp, mp, k_on, p_on, m_on


@triton.jit
def _uniform(o_r, m_r, j, p_u, u_stride, p_seed, p_off, seed_val, off_val, seed_stride, off_stride, rng_mode):
    """Uniform in [0, 1) for output rows ``o_r``, draw ``j``: ``u[row, j]`` (rng_mode 0) or
    Philox(seed, counter = (offset, row, j)) with seed/offset read from memory (stride 0: one for
    all rows, 1: one per row) or given as values (stride -1)."""
    if rng_mode == 0:
        u = tl.load(p_u + o_r.to(tl.int64) * u_stride + j, mask=m_r, other=0.5)
    else:
        seed = tl.full(o_r.shape, 0, tl.int64) + seed_val
        if seed_stride >= 0:
            seed = tl.load(p_seed + o_r.to(tl.int64) * seed_stride, mask=m_r, other=0)
        off = tl.full(o_r.shape, 0, tl.int64) + off_val
        if off_stride >= 0:
            off = tl.load(p_off + o_r.to(tl.int64) * off_stride, mask=m_r, other=0)
        c2 = o_r.to(tl.uint32)
        r0, _, _, _ = tl.philox(seed, off.to(tl.uint32), (off >> 32).to(tl.uint32), c2, c2 * 0 + j)
        u = tl.uint_to_uniform_float(r0)
    return u


@triton.jit
def _f_above(b_key, b_w, b_m, b_piv, COUNT: tl.constexpr):
    """For pivots ``b_piv`` [R, P] over elements [R, N]: (count or weight of key >= pivot,
    smallest element key >= pivot, largest element key < pivot), each [R, P]."""
    b_ge = (b_key[:, :, None] >= b_piv[:, None, :]) & b_m[:, :, None]
    if COUNT:
        b_f = tl.reduce(b_ge.to(tl.float32), 1, _SUM)
    else:
        b_f = tl.reduce(tl.where(b_ge, b_w[:, :, None], 0.0), 1, _SUM)
    b_above = tl.reduce(tl.where(b_ge, b_key[:, :, None], _KEY_MAX), 1, _MIN)
    b_below = tl.reduce(tl.where(b_m[:, :, None] & (b_ge == 0), b_key[:, :, None], _KEY_MIN), 1, _MAX)
    return b_f, b_above, b_below


@triton.jit
def _narrow(lo, hi, b_piv, b_f, b_above, b_below, target, floor, active):
    """One bisection step on keys: lo becomes the largest passing pivot (f >= target and
    f > floor), hi the first failing pivot - 1; both snap to element keys (FlashInfer's
    min_gt_low / max_le_high), so the search ends once one distinct key is left."""
    b_ok = (b_f >= target[:, None]) & (b_f > floor[:, None])
    new_lo = tl.reduce(tl.where(b_ok, b_piv, lo[:, None]), 1, _MAX)
    new_hi = tl.reduce(tl.where(b_ok, hi[:, None], b_piv - 1), 1, _MIN)
    snap_lo = tl.reduce(tl.where(b_ok & (b_piv == new_lo[:, None]), b_above.to(tl.int64), _KEY_MAX), 1, _MIN)
    snap_hi = tl.reduce(tl.where((b_ok == 0) & (b_piv == new_hi[:, None] + 1), b_below.to(tl.int64), _KEY_MIN),
                        1, _MAX)
    new_lo = tl.where(snap_lo < _KEY_MAX, snap_lo, new_lo)
    new_hi = tl.where(snap_hi > _KEY_MIN, snap_hi, new_hi)
    return tl.where(active, new_lo, lo), tl.where(active, new_hi, hi)


@triton.jit
def _pivots(lo, hi, P: tl.constexpr):
    """P pivots spread over (lo, hi]; they cover every key there once hi - lo <= P."""
    o_p = tl.arange(0, P).to(tl.int64)
    return lo[:, None] + 1 + (o_p[None, :] * (hi - lo)[:, None]) // P


@triton.jit
def _search_block(b_key, b_w, b_m, lo, hi, target, floor, active, COUNT: tl.constexpr, P: tl.constexpr):
    """Largest key t in [lo, hi] with f(t) >= target and f(t) > floor, f(t) the count (COUNT) or
    weight of the elements [R, N] in registers with key >= t. Needs f(lo) to pass; per row."""
    act = active & (lo < hi)
    while tl.reduce(act.to(tl.int32), 0, _MAX) > 0:
        b_piv = _pivots(lo, hi, P)
        b_f, b_above, b_below = _f_above(b_key, b_w, b_m, b_piv.to(tl.int32), COUNT)
        lo, hi = _narrow(lo, hi, b_piv, b_f, b_above, b_below, target, floor, act)
        act = act & (lo < hi)
    return lo


@triton.jit
def _search_row(p_xr, m_r, n, m, lo, hi, target, active, COUNT: tl.constexpr, IS_LOGITS: tl.constexpr,
                BLOCK: tl.constexpr, P: tl.constexpr):
    """``_search_block`` with f streamed over whole rows (the fallback when the bracket failed)."""
    o_b = tl.arange(0, BLOCK)
    act = active & (lo < hi)
    while tl.reduce(act.to(tl.int32), 0, _MAX) > 0:
        b_piv = _pivots(lo, hi, P)
        b_piv32 = b_piv.to(tl.int32)
        b_f = tl.zeros(b_piv.shape, tl.float32)
        b_above = tl.full(b_piv.shape, _KEY_MAX, tl.int32)
        b_below = tl.full(b_piv.shape, _KEY_MIN, tl.int32)
        for start in range(0, n, BLOCK):
            o = start + o_b
            b_mo = act[:, None] & (o < n)[None, :]
            b_x = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0).to(tl.float32)
            b_w = _weight(b_x, m[:, None], IS_LOGITS)
            f, above, below = _f_above(_key(b_x), b_w, b_mo, b_piv32, COUNT)
            b_f += f
            b_above = tl.minimum(b_above, above)
            b_below = tl.maximum(b_below, below)
        lo, hi = _narrow(lo, hi, b_piv, b_f, b_above, b_below, target, target * 0.0, act)
        act = act & (lo < hi)
    return lo


@triton.jit
def _stored_f(p_ck, p_row, region, b_cnt, m, b_piv32, active, nsplit, COUNT: tl.constexpr, IS_LOGITS: tl.constexpr,
              SPLIT_BLOCK: tl.constexpr, BLOCK: tl.constexpr):
    """``_f_above`` over the candidates the pass stored for one row ([1] tensors): chunk c's
    ``b_cnt[c]`` keys at ``p_ck + (p_row + c) * region``. Returns (f, above, below) [1, P]."""
    o_b = tl.arange(0, BLOCK)
    o_c = tl.arange(0, SPLIT_BLOCK)
    b_f = tl.zeros(b_piv32.shape, tl.float32)
    b_above = tl.full(b_piv32.shape, _KEY_MAX, tl.int32)
    b_below = tl.full(b_piv32.shape, _KEY_MIN, tl.int32)
    for c in range(0, nsplit):
        cnt = tl.reduce(tl.where(o_c[None, :] == c, b_cnt, 0), 1, _SUM)  # [1]
        top = tl.reduce(tl.where(active, cnt, 0), 0, _MAX)
        for start in range(0, top, BLOCK):
            o = start + o_b
            b_mo = active[:, None] & (o[None, :] < cnt[:, None])
            b_key = tl.load(p_ck + (p_row + c)[:, None] * region + o[None, :], mask=b_mo, other=_KEY_MIN)
            b_w = _weight(_value(b_key), m[:, None], IS_LOGITS)
            f, above, below = _f_above(b_key, b_w, b_mo, b_piv32, COUNT)
            b_f += f
            b_above = tl.minimum(b_above, above)
            b_below = tl.maximum(b_below, below)
    return b_f, b_above, b_below


@triton.jit
def _search_stored(p_ck, p_row, region, b_cnt, m, lo, hi, target, active, nsplit, COUNT: tl.constexpr,
                   IS_LOGITS: tl.constexpr, SPLIT_BLOCK: tl.constexpr, BLOCK: tl.constexpr, P: tl.constexpr):
    """``_search_row`` with f streamed over the stored candidates (``_stored_f``) instead of the
    row: the threshold of a bracket that held it but more than CAP candidates."""
    act = active & (lo < hi)
    while tl.reduce(act.to(tl.int32), 0, _MAX) > 0:
        b_piv = _pivots(lo, hi, P)
        b_f, b_above, b_below = _stored_f(p_ck, p_row, region, b_cnt, m, b_piv.to(tl.int32), act, nsplit, COUNT,
                                          IS_LOGITS, SPLIT_BLOCK, BLOCK)
        lo, hi = _narrow(lo, hi, b_piv, b_f, b_above, b_below, target, target * 0.0, act)
        act = act & (lo < hi)
    return lo


@triton.jit
def _radix_row(p_xr, n, k, lo, active, BLOCK: tl.constexpr):
    """Per row ([1] tensors: one row a program), the k-th largest element key of the whole row:
    the largest t with count(key >= t) >= k, what ``_search_row`` finds by bisection (where
    active; ``lo`` elsewhere). A radix select over the unsigned image of the key (key + 2^31),
    one byte a pass from the top: each pass streams the row once, histograms that byte of the
    elements whose higher bytes equal the prefix found so far (256 bins) and keeps the byte whose
    bin holds the k-th largest of them. Four passes, whatever the values, where the bisection
    needs about ten of a ``SEARCH_BLOCK`` tile (so eight times the iterations) a pass."""
    res = lo
    if tl.reduce(active.to(tl.int32), 0, _MAX) > 0:
        o_b = tl.arange(0, BLOCK)
        o_g = tl.arange(0, 256)
        rem = tl.reduce(k.to(tl.int32), 0, _SUM)  # rank of the target among the prefix's elements
        prefix = tl.reduce(lo.to(tl.int64) * 0, 0, _SUM)  # the bytes found so far (unsigned image)
        for i in tl.static_range(4):
            SHIFT = 24 - 8 * i
            b_h = tl.zeros([256], tl.int32)
            for start in range(0, n, BLOCK):
                o = start + o_b
                b_mo = (o < n)[None, :]
                b_x = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0).to(tl.float32)
                b_u = _key(b_x).to(tl.int64) + 2147483648
                b_in = b_mo & ((b_u >> (SHIFT + 8)) == (prefix >> (SHIFT + 8)))
                b_d = ((b_u >> SHIFT) & 255).to(tl.int32)
                b_h += tl.histogram(tl.reshape(b_d, [BLOCK]), 256, mask=tl.reshape(b_in, [BLOCK]))
            b_ge = tl.associative_scan(b_h, 0, _SUM, reverse=True)  # count of the bytes >= each byte
            d = tl.reduce(tl.where(b_ge >= rem, o_g, 0), 0, _MAX)
            rem -= _at(b_ge, d) - _at(b_h, d)
            prefix += d.to(tl.int64) << SHIFT
        res = tl.where(active, lo * 0 + (prefix - 2147483648), lo)
    return res


@triton.jit
def _mass_row(p_xr, n, thr, m, active, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """Weight of the elements with key >= thr, streamed over whole rows."""
    o_b = tl.arange(0, BLOCK)
    b_s = tl.zeros([thr.shape[0], BLOCK], tl.float32)
    if tl.reduce(active.to(tl.int32), 0, _MAX) > 0:
        for start in range(0, n, BLOCK):
            o = start + o_b
            b_mo = active[:, None] & (o < n)[None, :]
            b_x = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0).to(tl.float32)
            b_keep = b_mo & (_key(b_x) >= thr[:, None])
            b_s += tl.where(b_keep, _weight(b_x, m[:, None], IS_LOGITS), 0.0)
    return tl.reduce(b_s, 1, _SUM)


@triton.jit
def _pick_rows(p_xr, start, end, thr, m, target, run0, active, IS_LOGITS: tl.constexpr, BLOCK: tl.constexpr):
    """Per row, the first index in [start, end) with key >= thr and positive weight whose running
    weight (from run0) exceeds target; the last such index if rounding leaves none; -1 if the range
    has no positive weight. Also returns the running weight at the end of the scan (the total of
    the range for rows that did not hit) and whether the target was passed.

    Two levels: block sums (one reduction a block) find the block where the running weight passes
    target, and only that block is prefix-scanned (a scan costs several reductions)."""
    o_b = tl.arange(0, BLOCK)
    run = run0
    hit = tl.full(run0.shape, -1, tl.int64)
    hit_run = run0
    last = tl.full(run0.shape, -1, tl.int64)
    last_run = run0
    length = end - start
    it = 0
    go = active & (length > 0)
    while tl.reduce(go.to(tl.int32), 0, _MAX) > 0:
        o = start[:, None] + it + o_b[None, :]
        b_mo = go[:, None] & (o < end[:, None])
        b_x = tl.load(p_xr + o, mask=b_mo, other=0.0).to(tl.float32)
        b_w = _weight(b_x, m[:, None], IS_LOGITS)
        b_w = tl.where(b_mo & (_key(b_x) >= thr[:, None]) & (b_w > 0.0), b_w, 0.0)
        s = tl.reduce(b_w, 1, _SUM)
        now = go & (run + s > target)
        hit = tl.where(now, start + it, hit)
        hit_run = tl.where(now, run, hit_run)
        pos = go & (s > 0.0)
        last = tl.where(pos, start + it, last)
        last_run = tl.where(pos, run, last_run)
        run = tl.where(go, run + s, run)
        it += BLOCK
        go = go & (now == 0) & (it < length)
    blk = tl.where(hit >= 0, hit, last)
    brun = tl.where(hit >= 0, hit_run, last_run)
    o = blk[:, None] + o_b[None, :]
    b_mo = (active & (blk >= 0))[:, None] & (o < end[:, None])
    b_x = tl.load(p_xr + o, mask=b_mo, other=0.0).to(tl.float32)
    b_w = _weight(b_x, m[:, None], IS_LOGITS)
    b_keep = b_mo & (_key(b_x) >= thr[:, None]) & (b_w > 0.0)
    b_c = tl.associative_scan(tl.where(b_keep, b_w, 0.0), 1, _SUM) + brun[:, None]
    first = tl.reduce(tl.where(b_keep & (b_c > target[:, None]), o, 2**62), 1, _MIN)
    res = tl.where(first < 2**62, first, tl.reduce(tl.where(b_keep, o, -1), 1, _MAX))
    return res, run, hit >= 0


@triton.jit
def _at(b_vals, b_sel):
    """b_vals[b_sel] for a 1-D block (0 where b_sel is out of range)."""
    o = tl.arange(0, b_vals.shape[0])
    return tl.reduce(tl.where(o == b_sel, b_vals, 0), 0, _SUM)


@triton.jit
def _rank_bounds(b_edge, b_cnt, r_lo, r_hi, BINS: tl.constexpr):
    """(t_lo, t_hi) int64: the last bin edge with sample count at or above >= r_lo
    (KEY_MIN when none) and the first with count < r_hi (KEY_MAX when none or r_hi < 1)."""
    o = tl.arange(0, BINS)
    g_lo = tl.reduce(tl.where(b_cnt >= r_lo, o, -1), 0, _MAX)
    g_hi = tl.reduce(tl.where(b_cnt < r_hi, o, BINS), 0, _MIN)
    t_lo = tl.where(g_lo >= 0, _at(b_edge, g_lo).to(tl.int64), _KEY_MIN)
    t_hi = tl.where((g_hi < BINS) & (r_hi >= 1.0), _at(b_edge, g_hi).to(tl.int64), _KEY_MAX)
    return t_lo, t_hi


@triton.jit
def _sample_bracket(p_xr, n, k, tp, mp, k_on, p_on, m_on, k_first, cap, bracket_ok,
                    IS_LOGITS: tl.constexpr, CLIP: tl.constexpr, SAMPLE: tl.constexpr, BINS: tl.constexpr):
    """``_estimate`` for one row ([1] tensors) longer than the sample; works on scalars."""
    k = tl.reduce(k, 0, _SUM)
    tp = tl.reduce(tp, 0, _SUM)
    mp = tl.reduce(mp, 0, _SUM)
    k_on = tl.reduce(k_on.to(tl.int32), 0, _MAX) != 0
    p_on = tl.reduce(p_on.to(tl.int32), 0, _MAX) != 0
    m_on = tl.reduce(m_on.to(tl.int32), 0, _MAX) != 0
    k_first = tl.reduce(k_first.to(tl.int32), 0, _MAX) != 0
    bracket_ok = tl.reduce(bracket_ok.to(tl.int32), 0, _MAX) != 0
    SEG: tl.constexpr = SAMPLE // 16
    o_s = tl.arange(0, SAMPLE)
    o = (o_s // SEG) * (n // 16) + (o_s % SEG)
    b_m = o < n
    b_x = tl.reshape(tl.load(p_xr + o[None, :], mask=b_m[None, :], other=0.0), [SAMPLE]).to(tl.float32)
    b_k = _key(b_x)
    if IS_LOGITS:  # grid coordinate linear in log-weight: the logit itself, or the key of a probability
        b_c = b_x
        mx = tl.reduce(tl.where(b_m, b_x, float("-inf")), 0, _MAX)
        b_w = tl.where(b_m, tl.exp(b_x - mx), 0.0)
        span = 16.6  # e^-16.6 = 2^-24
    else:
        b_c = b_k.to(tl.float32)
        b_w = tl.where(b_m, tl.maximum(b_x, 0.0), 0.0)
        span = 24.0 * 8388608.0  # 24 octaves of float32 keys
    b_pos = b_m & (b_w > 0.0)
    cmax = tl.reduce(tl.where(b_pos, b_c, float("-inf")), 0, _MAX)
    cmax = tl.where(cmax > float("-inf"), cmax, 0.0)
    cmin = tl.reduce(tl.where(b_pos, b_c, float("inf")), 0, _MIN)
    if CLIP:
        cmin = tl.maximum(cmin, cmax - span)
    cmin = tl.minimum(cmin, cmax)
    step = tl.maximum((cmax - cmin) / BINS, 1e-30)
    b_bin = tl.minimum(((b_c - cmin) / step).to(tl.int32), BINS - 1)
    b_hist = tl.histogram(b_bin, BINS, mask=b_m & (b_c >= cmin))
    o_g = tl.arange(0, BINS)
    b_lo_c = cmin + o_g.to(tl.float32) * step  # lower bin edges
    if IS_LOGITS:
        b_edge = _key(b_lo_c)
        b_wmid = tl.exp(b_lo_c + 0.5 * step - mx)
    else:
        b_edge = b_lo_c.to(tl.int32)
        b_wmid = _value((b_lo_c + 0.5 * step).to(tl.int32))
    # sample count at or above each edge: the top-k set's sample rank is k * SAMPLE / n
    b_cnt = tl.associative_scan(b_hist, 0, _SUM, reverse=True).to(tl.float32)
    f = n.to(tl.float32) / SAMPLE
    r_k = k.to(tl.float32) / f
    t_lo, t_hi = _rank_bounds(b_edge, b_cnt, r_k + 3.0 * tl.sqrt(r_k) + 3.0, r_k - 3.0 * tl.sqrt(r_k) - 3.0, BINS)
    if p_on & (k_on == 0):
        b_hw = b_hist.to(tl.float32) * b_wmid
        if IS_LOGITS:
            # the sample's top-p set lies between two edges; rank margins as for top-k
            b_wt = tl.associative_scan(b_hw, 0, _SUM, reverse=True)
            g_p = tl.reduce(tl.where((b_wt >= tp * tl.reduce(b_hw, 0, _SUM)) & (b_wt > 0.0), o_g, 0), 0, _MAX)
            r_lo = _at(b_cnt, g_p)
            r_hi = _at(b_cnt, g_p + 1)
            t_lo, t_hi = _rank_bounds(b_edge, b_cnt, r_lo + 3.0 * tl.sqrt(r_lo) + 3.0, r_hi - 3.0 * tl.sqrt(r_hi) - 3.0,
                                      BINS)
        else:
            # rows sum to 1, so s* is where the mass below reaches 1 - top_p: the many light entries
            # below it make the sample estimate it well; 3 standard errors (sum of sampled
            # weights) and 3% (bin-centre weights) of margin on either side
            b_below = (tl.associative_scan(b_hw, 0, _SUM) - b_hw) * f
            b_se = tl.sqrt(tl.associative_scan(b_hw * b_wmid, 0, _SUM) - b_hw * b_wmid) * f
            b_err = 3.0 * b_se + 0.03 * b_below
            g_lo = tl.reduce(tl.where(b_below + b_err <= 1.0 - tp, o_g, 0), 0, _MAX)
            g_hi = tl.reduce(tl.where(b_below - b_err > 1.0 - tp, o_g, BINS), 0, _MIN)
            t_lo = _at(b_edge, g_lo).to(tl.int64)
            t_hi = tl.where(g_hi < BINS, _at(b_edge, g_hi).to(tl.int64), _KEY_MAX)
        # A small top-p set is estimated from a few sampled entries (a 155-entry set of 128256 from
        # about 5): the margins above miss it for about 3 % of such rows (seen for logits, p 0.5),
        # and a miss costs the whole-row fallback. t_lo goes no higher than the edge with about
        # cap / 4 entries above it, which a collect-whole bracket holds anyway.
        t_cap, _ = _rank_bounds(b_edge, b_cnt, 0.25 * cap / f, 0.0, BINS)
        t_lo = tl.minimum(t_lo, t_cap)
    # two filters: t_lo bounds the top-k threshold, hence s* (joint: the max; top_k_first: within
    # the top-k set); everything above it is collected
    t_hi = tl.where(k_on & p_on, _KEY_MAX, t_hi)
    if not IS_LOGITS:  # min-p: s* = key(min_p * row max) >= key(min_p * sample max)
        t_m = _key(mp * tl.reduce(tl.where(b_m, b_x, 0.0), 0, _MAX)).to(tl.int64)
        t_lo = tl.where(m_on, tl.where(k_on | p_on, tl.maximum(t_lo, t_m), t_m), t_lo)
        t_hi = tl.where(m_on, _KEY_MAX, t_hi)
    above = tl.reduce(tl.where(b_m & (b_k.to(tl.int64) >= t_lo), 1.0, 0.0), 0, _SUM) * f
    one = tl.zeros([1], tl.int64)
    return one + t_lo, one + tl.where(bracket_ok & (above > 0.5 * cap), t_hi, _KEY_MAX)


@triton.jit
def _estimate(p_xr, n, k, tp, mp, k_on, p_on, m_on, k_first, cap, bracket_ok,
              IS_LOGITS: tl.constexpr, CLIP: tl.constexpr, SAMPLE: tl.constexpr, BINS: tl.constexpr):
    """Bracket [t_lo, t_hi) (int64 keys per row) around the kept-set threshold s*: t_lo is a
    likely lower bound of s*, t_hi a likely upper bound (KEY_MAX: none, collect everything
    >= t_lo). Rows without a filter get the empty bracket [KEY_MAX, KEY_MAX); rows that fit whole
    (at most SAMPLE and ``cap`` elements; always so for configs of more than one row a program)
    collect everything.

    Longer rows: a sample of 16 spread segments (SAMPLE elements) is histogrammed into BINS bins
    linear in log-weight (the logit for logits, the float32 key of a probability) over its top 24
    octaves (the whole range for count-only ops: CLIP False). From the counts (and bin-centre
    weights) at or above each bin edge: the sample rank of the top-k set is k * SAMPLE / n; the
    sample's top-p set lies between two edges. Poisson margins (3 sqrt(r) + 3) on those ranks
    give t_lo and t_hi; a top-p t_lo is at most the edge with about cap / 4 entries above it (a
    small top-p set is estimated from a few sampled entries). With two filters t_hi is KEY_MAX
    (everything >= t_lo is collected) and the joint order also raises t_lo to the top-p bound. A
    bracket (t_hi < KEY_MAX) is kept only where everything >= t_lo would likely not fit in ``cap``."""
    on = k_on | p_on | m_on
    t_lo = tl.full(k.shape, _KEY_MIN, tl.int64)
    t_hi = tl.full(k.shape, _KEY_MAX, tl.int64)
    if k.shape[0] == 1:
        if ((n > SAMPLE) | (n > cap)) & (tl.reduce(on.to(tl.int32), 0, _MAX) > 0):
            t_lo, t_hi = _sample_bracket(p_xr, n, k, tp, mp, k_on, p_on, m_on, k_first, cap, bracket_ok,
                                         IS_LOGITS, CLIP, SAMPLE, BINS)
    return tl.where(on, t_lo, _KEY_MAX), tl.where(on, t_hi, _KEY_MAX)


@triton.jit
def _op_filters(OP: tl.constexpr, IS_LOGITS: tl.constexpr, k_on, p_on, m_on):
    """The filters each op can have: renorm has k or p, mask and top_k only k, min-p only on probs."""
    off = k_on & (k_on == 0)
    if OP == _OP_MASK or OP == _OP_TOPK:
        p_on = off
        m_on = off
    if OP == _OP_RENORM or IS_LOGITS:
        m_on = off
    return k_on, p_on, m_on


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _stats_step(p_xr, o, b_mo, b_kmin, b_kmax, b_m, b_s, NEED_W: tl.constexpr, IS_LOGITS: tl.constexpr):
    """One block of the pass's row statistics, per lane: load ``BLOCK`` elements of each row, their
    keys' min / max and, with ``NEED_W``, the running max ``b_m`` and weight sum ``b_s`` (online
    softmax for logits, clamped probabilities otherwise). Returns (raw values, keys, kmin, kmax, m,
    s, the block's rescale factor of earlier sums, its weights) for the caller's bracket sums."""
    b_raw = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0)
    b_x = b_raw.to(tl.float32)
    b_k = _key(b_x)
    b_kmin = tl.minimum(b_kmin, tl.where(b_mo, b_k, _KEY_MAX))
    b_kmax = tl.maximum(b_kmax, tl.where(b_mo, b_k, _KEY_MIN))
    b_sc = tl.full(b_x.shape, 1.0, tl.float32)
    b_e = tl.zeros(b_x.shape, tl.float32)
    if NEED_W:
        if IS_LOGITS:
            b_mn = tl.maximum(b_m, tl.where(b_mo, b_x, float("-inf")))
            b_safe = tl.where(b_mn == float("-inf"), 0.0, b_mn)
            b_sc = tl.exp(b_m - b_safe)
            b_e = tl.where(b_mo, tl.exp(b_x - b_safe), 0.0)
            b_s = b_s * b_sc + b_e
            b_m = b_mn
        else:
            b_m = tl.maximum(b_m, tl.where(b_mo, b_x, float("-inf")))
            b_e = tl.where(b_mo, tl.maximum(b_x, 0.0), 0.0)
            b_s += b_e
    return b_raw, b_k, b_kmin, b_kmax, b_m, b_s, b_sc, b_e


@triton.jit(do_not_specialize=["n", "batch", "chunk", "region", "has_idx", "top_k_val", "top_p_val", "min_p_val",
                               "mode_k", "mode_p", "mode_m", "joint", "spec_write", "bracket"])
def sample_pass_kernel(
    p_x, p_idx, p_topk, p_topp, p_minp, p_out, p_pi, p_pf, p_ck, p_ci,
    stride_x, stride_o, n, batch, chunk, region, has_idx,
    top_k_val, top_p_val, min_p_val, mode_k, mode_p, mode_m, joint, spec_write, bracket,
    OP: tl.constexpr, IS_LOGITS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, SAMPLE: tl.constexpr,
    BINS: tl.constexpr, CAP: tl.constexpr, STAGES: tl.constexpr,
):
    """Program (g, c): output rows g*ROWS.. of input rows ``indices[i]`` (or i), chunk c of the
    vocabulary. Writes the chunk partials (``_NUM_IPART`` ints, ``_NUM_FPART`` floats per row and
    chunk), the bracket's candidates (key, index) into region (row, c) of ``region`` entries,
    and for the filters their speculative output (``spec_write``; mask: x where key >= t_lo,
    else -inf; renorm: 0). ``bracket`` 0 collects everything >= t_lo (top_k needs every kept
    element). OP_TOPK runs this kernel as OP_MASK without the write. See the module docstring."""
    NEED_W: tl.constexpr = OP == _OP_SAMPLE or OP == _OP_RENORM
    top_p_val = tl.cast(top_p_val, tl.float32)
    min_p_val = tl.cast(min_p_val, tl.float32)
    pid_c = tl.program_id(1)
    nsplit = tl.num_programs(1)
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    row = o_r.to(tl.int64)
    if has_idx:
        row = tl.load(p_idx + o_r, mask=m_r, other=0).to(tl.int64)
    p_xr = p_x + row[:, None] * stride_x
    k, tp, mp, k_on, p_on, m_on = _row_params(o_r, m_r, n, p_topk, p_topp, p_minp, top_k_val, top_p_val, min_p_val,
                                              mode_k, mode_p, mode_m)
    k_on, p_on, m_on = _op_filters(OP, IS_LOGITS, k_on, p_on, m_on)
    t_lo, t_hi = _estimate(p_xr, n, k, tp, mp, k_on, p_on, m_on, k_on & p_on & ((o_r * 0 + joint) == 0), CAP,
                           (o_r * 0 + bracket) != 0, IS_LOGITS or not NEED_W, NEED_W, SAMPLE, BINS)
    t_lo32 = t_lo.to(tl.int32)
    t_wr = tl.where(k_on, t_lo32, _KEY_MIN)  # mask: rows without a filter keep everything
    t_fix = (k_on | p_on) & (t_hi == _KEY_MAX)  # renorm: rows that only need their candidates fixed up
    t_hi32 = t_hi.to(tl.int32)
    rg = o_r.to(tl.int64) * nsplit + pid_c  # this program's region / partials slot per row
    p_or = p_out + o_r[:, None].to(tl.int64) * stride_o
    b_kmin = tl.full([ROWS, BLOCK], _KEY_MAX, tl.int32)
    b_kmax = tl.full([ROWS, BLOCK], _KEY_MIN, tl.int32)
    b_clo = tl.zeros([ROWS, BLOCK], tl.int32)
    b_chi = tl.zeros([ROWS, BLOCK], tl.int32)
    b_m = tl.full([ROWS, BLOCK], float("-inf"), tl.float32)
    b_s = tl.zeros([ROWS, BLOCK], tl.float32)
    b_wlo = tl.zeros([ROWS, BLOCK], tl.float32)
    b_whi = tl.zeros([ROWS, BLOCK], tl.float32)
    base = tl.zeros([ROWS], tl.int32)
    o_b = tl.arange(0, BLOCK)
    start0 = pid_c * chunk
    end = tl.minimum(start0 + chunk, n)
    if tl.reduce((k_on | p_on | m_on).to(tl.int32), 0, _MAX) > 0:
        for start in tl.range(start0, end, BLOCK, num_stages=STAGES):
            o = start + o_b
            b_mo = m_r[:, None] & (o < end)[None, :]
            b_raw, b_k, b_kmin, b_kmax, b_m, b_s, b_sc, b_e = _stats_step(p_xr, o, b_mo, b_kmin, b_kmax, b_m, b_s,
                                                                         NEED_W, IS_LOGITS)
            b_lo = b_mo & (b_k >= t_lo32[:, None])
            b_hi = b_mo & (b_k >= t_hi32[:, None])
            b_clo += b_lo.to(tl.int32)
            b_chi += b_hi.to(tl.int32)
            if NEED_W:  # the weights at the bracket, rescaled as the running sum is
                if IS_LOGITS:
                    b_wlo = b_wlo * b_sc + tl.where(b_lo, b_e, 0.0)
                    b_whi = b_whi * b_sc + tl.where(b_hi, b_e, 0.0)
                else:
                    b_wlo += tl.where(b_lo, b_e, 0.0)
                    b_whi += tl.where(b_hi, b_e, 0.0)
            b_cand = (b_lo & (b_hi == 0)).to(tl.int32)
            n_cand = tl.reduce(b_cand, 1, _SUM)
            if tl.reduce(n_cand, 0, _MAX) > 0:
                b_pos = tl.associative_scan(b_cand, 1, _SUM) - 1 + base[:, None]
                b_st = (b_cand > 0) & (b_pos < region)
                p_c = rg[:, None] * region + b_pos
                tl.store(p_ck + p_c, b_k, mask=b_st)
                tl.store(p_ci + p_c, o[None, :] + b_pos * 0, mask=b_st)
                base += n_cand
            if OP == _OP_MASK:
                if spec_write:
                    b_y = tl.where(b_k >= t_wr[:, None], b_raw, float("-inf"))
                    tl.store(p_or + o[None, :], b_y.to(p_out.dtype.element_ty), mask=b_mo)
            if OP == _OP_RENORM:  # zeros where the resolve only fixes up candidates; other rows get rewritten
                tl.store(p_or + o[None, :], tl.zeros([ROWS, BLOCK], p_out.dtype.element_ty), mask=b_mo & t_fix[:, None])
    else:
        # No row of this program has a filter (plain samplers, k >= n): t_lo = t_hi = KEY_MAX, so
        # no element is a candidate and the counts / weights at the bracket go unread. Only the
        # row statistics stream, without the full loop's per-block test for candidates (a
        # block-wide reduction and branch every BLOCK elements) and its bracket bookkeeping.
        for start in tl.range(start0, end, BLOCK, num_stages=STAGES):
            o = start + o_b
            b_mo = m_r[:, None] & (o < end)[None, :]
            b_raw, b_k, b_kmin, b_kmax, b_m, b_s, b_sc, b_e = _stats_step(p_xr, o, b_mo, b_kmin, b_kmax, b_m, b_s,
                                                                         NEED_W, IS_LOGITS)
            if OP == _OP_MASK:
                if spec_write:  # t_wr is KEY_MIN: the row is copied
                    tl.store(p_or + o[None, :], b_raw.to(p_out.dtype.element_ty), mask=b_mo)
    p_i = p_pi + rg * _NUM_IPART
    tl.store(p_i + 0, tl.reduce(b_kmin, 1, _MIN), mask=m_r)
    tl.store(p_i + 1, tl.reduce(b_kmax, 1, _MAX), mask=m_r)
    tl.store(p_i + 2, tl.reduce(b_clo, 1, _SUM), mask=m_r)
    tl.store(p_i + 3, tl.reduce(b_chi, 1, _SUM), mask=m_r)
    tl.store(p_i + 4, t_lo32, mask=m_r)
    tl.store(p_i + 5, t_hi32, mask=m_r)
    if NEED_W:
        mx = tl.reduce(b_m, 1, _MAX)
        if IS_LOGITS:
            b_sc = tl.exp(b_m - tl.where(mx == float("-inf"), 0.0, mx)[:, None])
        else:
            b_sc = tl.full([ROWS, BLOCK], 1.0, tl.float32)
        p_f = p_pf + rg * _NUM_FPART
        tl.store(p_f + 0, mx, mask=m_r)
        tl.store(p_f + 1, tl.reduce(b_s * b_sc, 1, _SUM), mask=m_r)
        tl.store(p_f + 2, tl.reduce(b_wlo * b_sc, 1, _SUM), mask=m_r)
        tl.store(p_f + 3, tl.reduce(b_whi * b_sc, 1, _SUM), mask=m_r)


@triton.jit
def _write_rows(p_xr, p_or, o_r, start0, end, thr, inv, active, OP: tl.constexpr, ROWS: tl.constexpr,
                BLOCK: tl.constexpr):
    """Filter output over [start0, end) of the active rows: key >= thr keeps x (mask) or
    max(x, 0) * inv (renorm); the rest is -inf (mask) or 0 (renorm)."""
    o_b = tl.arange(0, BLOCK)
    if tl.reduce(active.to(tl.int32), 0, _MAX) > 0:
        for start in range(start0, end, BLOCK):
            o = start + o_b
            b_mo = active[:, None] & (o < end)[None, :]
            b_raw = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0)
            b_x = b_raw.to(tl.float32)
            b_keep = _key(b_x).to(tl.int64) >= thr[:, None]
            if OP == _OP_MASK:
                b_y = tl.where(b_keep, b_raw, float("-inf"))
            else:
                b_y = tl.where(b_keep, tl.maximum(b_x, 0.0) * inv[:, None], 0.0)
            tl.store(p_or + o[None, :], b_y.to(p_or.dtype.element_ty), mask=b_mo)


@triton.jit
def _topk_rows(p_xr, p_vr, p_ir, n, k, thr, tie_large, active, BLOCK: tl.constexpr):
    """top_k output of the active rows by streaming: every element with key > thr in index order,
    then the ties key == thr (the first ones in index order, or the last ones with tie_large)."""
    o_b = tl.arange(0, BLOCK)
    if tl.reduce(active.to(tl.int32), 0, _MAX) > 0:
        n_gt = tl.zeros(thr.shape, tl.int32)
        n_eq = tl.zeros(thr.shape, tl.int32)
        for start in range(0, n, BLOCK):
            o = start + o_b
            b_mo = active[:, None] & (o < n)[None, :]
            b_raw = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0)
            b_k = _key(b_raw.to(tl.float32)).to(tl.int64)
            b_gt = (b_mo & (b_k > thr[:, None])).to(tl.int32)
            b_pos = tl.associative_scan(b_gt, 1, _SUM) - 1 + n_gt[:, None]
            b_st = (b_gt > 0) & (b_pos < k)
            tl.store(p_vr + b_pos, b_raw, mask=b_st)
            tl.store(p_ir + b_pos, (o[None, :] + b_pos * 0).to(tl.int64), mask=b_st)
            n_gt += tl.reduce(b_gt, 1, _SUM)
            n_eq += tl.reduce((b_mo & (b_k == thr[:, None])).to(tl.int32), 1, _SUM)
        need = k - n_gt
        skip = tl.where(tie_large != 0, n_eq - need, 0)
        seen = tl.zeros(thr.shape, tl.int32)
        for start in range(0, n, BLOCK):
            o = start + o_b
            b_mo = active[:, None] & (o < n)[None, :]
            b_raw = tl.load(p_xr + o[None, :], mask=b_mo, other=0.0)
            b_eq = (b_mo & (_key(b_raw.to(tl.float32)).to(tl.int64) == thr[:, None])).to(tl.int32)
            b_t = tl.associative_scan(b_eq, 1, _SUM) - 1 + seen[:, None] - skip[:, None]
            b_st = (b_eq > 0) & (b_t >= 0) & (b_t < need[:, None])
            b_pos = n_gt[:, None] + b_t
            tl.store(p_vr + b_pos, b_raw, mask=b_st)
            tl.store(p_ir + b_pos, (o[None, :] + b_pos * 0).to(tl.int64), mask=b_st)
            seen += tl.reduce(b_eq, 1, _SUM)


_RESOLVE_NO_SPECIALIZE = ["n", "batch", "chunk", "region", "nsplit", "has_idx", "top_k_val", "top_p_val", "min_p_val",
                          "mode_k", "mode_p", "mode_m", "joint", "full_here", "tie_large", "u_stride", "seed_val",
                          "off_val", "seed_stride", "off_stride", "rng_mode"]


@triton.jit(do_not_specialize=_RESOLVE_NO_SPECIALIZE)
def sample_resolve_kernel(
    p_x, p_idx, p_topk, p_topp, p_minp, p_out, p_aux, p_pi, p_pf, p_ck, p_ci, p_state, p_u, p_seed, p_off,
    stride_x, stride_o, n, batch, chunk, region, nsplit, has_idx,
    top_k_val, top_p_val, min_p_val, mode_k, mode_p, mode_m, joint, full_here, tie_large,
    u_stride, seed_val, off_val, seed_stride, off_stride, rng_mode,
    OP: tl.constexpr, IS_LOGITS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, CAP: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr, PIVOTS: tl.constexpr, SEARCH_BLOCK: tl.constexpr,
):
    """One program per ROWS output rows: exact threshold s*, then (OP_SAMPLE) the sample into
    ``p_out`` (int32) and its validity into ``p_aux`` (bool); (OP_RENORM / OP_MASK) the output
    fix-up by scatter, and the whole row (``full_here``) or the apply kernel's state; (OP_TOPK)
    values into ``p_out`` and int64 indices into ``p_aux``, rows of ``top_k_val``. ``p_state``
    (``NUM_STATE`` ints a row): rewrite the row, s*, 1 / mass (float bits), the ``PATH_*`` taken.
    See the module docstring."""
    NEED_W: tl.constexpr = OP == _OP_SAMPLE or OP == _OP_RENORM
    top_p_val = tl.cast(top_p_val, tl.float32)
    min_p_val = tl.cast(min_p_val, tl.float32)
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    row = o_r.to(tl.int64)
    if has_idx:
        row = tl.load(p_idx + o_r, mask=m_r, other=0).to(tl.int64)
    p_xr = p_x + row[:, None] * stride_x
    k, tp, mp, k_on, p_on, m_on = _row_params(o_r, m_r, n, p_topk, p_topp, p_minp, top_k_val, top_p_val, min_p_val,
                                              mode_k, mode_p, mode_m)
    k_on, p_on, m_on = _op_filters(OP, IS_LOGITS, k_on, p_on, m_on)
    k_first = k_on & p_on & ((o_r * 0 + joint) == 0)
    on = k_on | p_on | m_on
    kf = k.to(tl.float32)
    # ---- combine the chunk partials
    o_c = tl.arange(0, SPLIT_BLOCK)
    b_mc = m_r[:, None] & (o_c < nsplit)[None, :]
    p_i = p_pi + (o_r[:, None].to(tl.int64) * nsplit + o_c[None, :]) * _NUM_IPART
    kmin = tl.reduce(tl.load(p_i + 0, mask=b_mc, other=_KEY_MAX), 1, _MIN).to(tl.int64)
    kmax = tl.reduce(tl.load(p_i + 1, mask=b_mc, other=_KEY_MIN), 1, _MAX).to(tl.int64)
    b_clo = tl.load(p_i + 2, mask=b_mc, other=0)
    b_chi = tl.load(p_i + 3, mask=b_mc, other=0)
    c_lo = tl.reduce(b_clo, 1, _SUM).to(tl.float32)
    c_hi = tl.reduce(b_chi, 1, _SUM).to(tl.float32)
    p_i0 = p_pi + o_r.to(tl.int64) * nsplit * _NUM_IPART
    t_lo = tl.load(p_i0 + 4, mask=m_r, other=_KEY_MAX).to(tl.int64)
    t_hi = tl.load(p_i0 + 5, mask=m_r, other=_KEY_MAX).to(tl.int64)
    mx = tl.zeros([ROWS], tl.float32)
    tot = tl.zeros([ROWS], tl.float32)
    w_lo = tl.zeros([ROWS], tl.float32)
    w_hi = tl.zeros([ROWS], tl.float32)
    b_tot = tl.zeros([ROWS, SPLIT_BLOCK], tl.float32)
    b_whi = tl.zeros([ROWS, SPLIT_BLOCK], tl.float32)
    if NEED_W:
        p_f = p_pf + (o_r[:, None].to(tl.int64) * nsplit + o_c[None, :]) * _NUM_FPART
        b_mx = tl.load(p_f + 0, mask=b_mc, other=float("-inf"))
        mx = tl.reduce(b_mx, 1, _MAX)
        if IS_LOGITS:
            b_sc = tl.where(b_mc, tl.exp(b_mx - tl.where(mx == float("-inf"), 0.0, mx)[:, None]), 0.0)
        else:
            b_sc = tl.where(b_mc, 1.0, 0.0)
        b_tot = tl.load(p_f + 1, mask=b_mc, other=0.0) * b_sc
        tot = tl.reduce(b_tot, 1, _SUM)
        w_lo = tl.reduce(tl.load(p_f + 2, mask=b_mc, other=0.0) * b_sc, 1, _SUM)
        b_whi = tl.load(p_f + 3, mask=b_mc, other=0.0) * b_sc
        w_hi = tl.reduce(b_whi, 1, _SUM)
    # ---- gather the candidates (chunk regions, in chunk order: index order) into registers
    m_cand = c_lo - c_hi
    fits = m_cand <= CAP
    b_cnt = tl.minimum(b_clo - b_chi, region)
    b_end = tl.associative_scan(b_cnt, 1, _SUM)  # region ends in slot space
    o_j = tl.arange(0, CAP)
    b_v = m_r[:, None] & fits[:, None] & (o_j[None, :].to(tl.float32) < m_cand[:, None])
    # slot j lies in the last region c whose start <= j (empty regions share their successor's start)
    b_first = b_end - b_cnt
    b_reg = tl.zeros([ROWS, CAP], tl.int32)
    b_base = tl.zeros([ROWS, CAP], tl.int32)
    for c in range(1, nsplit):
        first = tl.reduce(tl.where(o_c[None, :] == c, b_first, 0), 1, _SUM)
        b_in = o_j[None, :] >= first[:, None]
        b_reg = tl.where(b_in, c, b_reg)
        b_base = tl.where(b_in, first[:, None], b_base)
    b_ent = o_j[None, :] - b_base
    p_c = (o_r[:, None].to(tl.int64) * nsplit + b_reg) * region + b_ent
    b_key = tl.load(p_ck + p_c, mask=b_v, other=_KEY_MIN)
    b_idx = tl.load(p_ci + p_c, mask=b_v, other=0)
    b_w = tl.zeros([ROWS, CAP], tl.float32)
    if NEED_W:
        b_w = tl.where(b_v, _weight(_value(b_key), mx[:, None], IS_LOGITS), 0.0)
    # ---- exact thresholds among the candidates (offsets: counts / weights at or above t_hi). A
    # threshold is found there when the bracket holds it (c_hi < k <= c_lo; w_hi < target <= w_lo).
    # Joint order: s* is the larger threshold, so one below t_lo needs no value when the other is found.
    hi0 = tl.minimum(t_hi - 1, kmax)
    joint = k_on & p_on & (k_first == 0)
    k_in = (c_hi < kf) & (c_lo >= kf)
    s_k = _search_block(b_key, b_w, b_v, t_lo, hi0, kf - c_hi, kf * 0.0 - 1.0, k_on & fits & k_in, True, PIVOTS)
    s_p = tl.full([ROWS], _KEY_MIN, tl.int64)
    p_in = k_in & False
    p_below = p_in
    if NEED_W:
        base = tot if IS_LOGITS else tot * 0.0 + 1.0
        m_k = w_hi + tl.reduce(tl.where(b_v & (b_key.to(tl.int64) >= s_k[:, None]), b_w, 0.0), 1, _SUM)
        target = tp * tl.where(k_first, m_k, base)
        pass_lo = tl.where(k_first, k_in & (m_k > 0.0), (w_lo >= target) & (w_lo > 0.0))
        p_in = pass_lo & ((w_hi < target) | (w_hi <= 0.0))
        p_below = pass_lo == 0
        s_p = _search_block(b_key, b_w, b_v, tl.where(k_first, s_k, t_lo), hi0, target - w_hi, -w_hi,
                            p_on & fits & p_in, False, PIVOTS)
    k_below = c_lo < kf
    ok_k = k_in | (joint & k_below & p_in)
    ok_p = p_in | (joint & p_below & k_in)
    s_k = tl.where(joint & k_below, _KEY_MIN, s_k)
    s_p = tl.where(joint & p_below, _KEY_MIN, s_p)
    ok = fits & ((k_on == 0) | ok_k) & ((p_on == 0) | ok_p)
    s_m = _key(mp * mx).to(tl.int64)
    ok = ok & ((m_on == 0) | ((s_m >= t_lo) & (s_m < t_hi)))
    thr = tl.full([ROWS], _KEY_MIN, tl.int64)
    thr = tl.where(k_on & (k_first == 0), tl.maximum(thr, s_k), thr)
    thr = tl.where(p_on, tl.maximum(thr, s_p), thr)
    thr = tl.where(m_on, tl.maximum(thr, s_m), thr)
    fast = on & ok
    mass = tl.where(on, w_hi + tl.reduce(tl.where(b_v & (b_key.to(tl.int64) >= thr[:, None]), b_w, 0.0), 1, _SUM),
                    tot)
    # ---- one filter whose bracket held s* with more than CAP candidates, all of them stored by the
    # pass (the chunk regions hold 2 CAP each): s* by the bisection over the stored candidates, a few
    # thousand elements instead of the whole row; the kept set is then streamed as on a bracket.
    need = on & (fast == 0)
    stored = m_r & False
    if ROWS == 1:
        all_kept = tl.reduce(((b_clo - b_chi) <= region).to(tl.int32), 1, _MIN) > 0  # (masked chunks: 0 <= region)
        one_k = k_on & (p_on == 0) & (m_on == 0) & k_in
        one_p = p_on & (k_on == 0) & (m_on == 0) & p_in
        stored = need & all_kept & (one_k | one_p) & (t_hi < _KEY_MAX)
        if tl.reduce(stored.to(tl.int32), 0, _MAX) > 0:
            p_row = o_r.to(tl.int64) * nsplit
            if NEED_W:
                goal = tl.where(one_k, kf - c_hi, target - w_hi)
            else:
                goal = kf - c_hi
            s_st = _search_stored(p_ck, p_row, region, b_cnt, mx, t_lo, hi0, goal, stored & one_k, nsplit, True,
                                  IS_LOGITS, SPLIT_BLOCK, BLOCK, PIVOTS)
            thr = tl.where(stored & one_k, s_st, thr)
            if NEED_W:
                s_sp = _search_stored(p_ck, p_row, region, b_cnt, mx, t_lo, hi0, goal, stored & one_p, nsplit, False,
                                      IS_LOGITS, SPLIT_BLOCK, BLOCK, PIVOTS)
                thr = tl.where(stored & one_p, s_sp, thr)
                # the kept weight: the entries >= t_hi plus the stored candidates >= s*
                f_st, _, _ = _stored_f(p_ck, p_row, region, b_cnt, mx, thr[:, None].to(tl.int32), stored, nsplit,
                                       False, IS_LOGITS, SPLIT_BLOCK, BLOCK)
                mass = tl.where(stored, w_hi + tl.reduce(f_st, 1, _SUM), mass)
            s_k = tl.where(stored & one_k, thr, s_k)
            need = need & (stored == 0)
    path = tl.where(on, tl.where(fast, tl.where(t_hi == _KEY_MAX, 1, 2), tl.where(stored, _PATH_STORED, 3)), 0)
    p_s = p_state + o_r.to(tl.int64) * _NUM_STATE
    tl.store(p_s + 3, path, mask=m_r)
    if OP == _OP_TOPK:
        need = need | (m_r & (k_on == 0))
    if tl.reduce(need.to(tl.int32), 0, _MAX) > 0:
        if ROWS == 1:  # the same threshold in four streamed passes (the bisection takes about ten)
            s_kf = _radix_row(p_xr, n, k, kmin, need & k_on, BLOCK)
        else:
            s_kf = _search_row(p_xr, m_r, n, mx, kmin, kmax, kf, need & k_on, True, IS_LOGITS, SEARCH_BLOCK, PIVOTS)
        s_k = tl.where(need, s_kf, s_k)
        if NEED_W:
            m_kf = _mass_row(p_xr, n, s_k, mx, need & k_first, IS_LOGITS, BLOCK)
            target = tp * tl.where(k_first, m_kf, tot if IS_LOGITS else tot * 0.0 + 1.0)
            s_pf = _search_row(p_xr, m_r, n, mx, tl.where(k_first, s_k, kmin), kmax, target, need & p_on, False,
                               IS_LOGITS, SEARCH_BLOCK, PIVOTS)
            s_p = tl.where(need, s_pf, s_p)
        thr_f = tl.full([ROWS], _KEY_MIN, tl.int64)
        thr_f = tl.where(k_on & (k_first == 0), tl.maximum(thr_f, s_k), thr_f)
        thr_f = tl.where(p_on, tl.maximum(thr_f, s_p), thr_f)
        thr_f = tl.where(m_on, tl.maximum(thr_f, s_m), thr_f)
        thr = tl.where(need, thr_f, thr)
        if NEED_W:
            mass = tl.where(need, _mass_row(p_xr, n, thr, mx, need, IS_LOGITS, BLOCK), mass)
    # ---- outputs
    all_in = fast & (t_hi == _KEY_MAX)  # every kept element is a candidate
    b_kept = b_v & (b_key.to(tl.int64) >= thr[:, None])
    if OP == _OP_SAMPLE:
        u = _uniform(o_r, m_r, 0, p_u, u_stride, p_seed, p_off, seed_val, off_val, seed_stride, off_stride, rng_mode)
        tau = u * mass
        if not IS_LOGITS:  # plain probs: u against the running sum as if the row summed to 1
            redraw = (u >= tot) & (tot < 1.0)
            tau = tl.where(on, tau, tl.where(redraw, (u - tot) / tl.where(redraw, 1.0 - tot, 1.0) * tot, u))
        b_kw = tl.where(b_kept & (b_w > 0.0), b_w, 0.0)
        b_cum = tl.associative_scan(b_kw, 1, _SUM)
        first = tl.reduce(tl.where((b_kw > 0.0) & (b_cum > tau[:, None]), o_j[None, :], CAP), 1, _MIN)
        first = tl.where(first < CAP, first, tl.reduce(tl.where(b_kw > 0.0, o_j[None, :], -1), 1, _MAX))
        res = tl.reduce(tl.where(o_j[None, :] == first[:, None], b_idx, 0), 1, _SUM).to(tl.int64)
        res = tl.where(first >= 0, res, -1)
        # streaming pick within the one chunk where the running weight passes tau: plain rows by the
        # chunk totals; bracket rows (every kept candidate in registers, in chunk order) by the
        # kept weight per chunk, the entries >= t_hi (chunk partials) plus the kept candidates
        # between that chunk's slots (from their running sum). Other rows stream the whole row.
        plain = on == 0
        brk = fast & (t_hi < _KEY_MAX)
        b_kc = b_tot  # weight to draw from, per chunk
        if tl.reduce(brk.to(tl.int32), 0, _MAX) > 0:
            b_kc = tl.where(brk[:, None], b_whi, b_kc)
            for c in range(0, nsplit):
                first_c = tl.reduce(tl.where(o_c[None, :] == c, b_first, 0), 1, _SUM)
                end_c = tl.reduce(tl.where(o_c[None, :] == c, b_end, 0), 1, _SUM)
                b_in_c = (o_j[None, :] >= first_c[:, None]) & (o_j[None, :] < end_c[:, None])
                w_c = tl.reduce(tl.where(b_in_c, b_kw, 0.0), 1, _SUM)
                b_kc = tl.where(brk[:, None] & (o_c[None, :] == c), b_kc + w_c[:, None], b_kc)
        b_cum_c = tl.associative_scan(b_kc, 1, _SUM)
        c_hit = tl.reduce(tl.where(b_cum_c > tau[:, None], o_c[None, :], SPLIT_BLOCK), 1, _MIN)
        c_hit = tl.where(c_hit < SPLIT_BLOCK, c_hit, tl.reduce(tl.where(b_kc > 0.0, o_c[None, :], 0), 1, _MAX))
        run0 = tl.reduce(tl.where(o_c[None, :] == c_hit[:, None], b_cum_c - b_kc, 0.0), 1, _SUM)
        one_chunk = plain | brk
        start = tl.where(one_chunk, c_hit * chunk, 0).to(tl.int64)
        stop = tl.where(one_chunk, tl.minimum(start + chunk, n), n).to(tl.int64)
        pick = m_r & (all_in == 0) & (mass > 0.0)
        res_p, _, _ = _pick_rows(p_xr, start, stop, tl.where(plain, _KEY_MIN, thr), mx, tau,
                                 tl.where(one_chunk, run0, 0.0), pick, IS_LOGITS, BLOCK)
        res = tl.where(all_in, res, res_p)
        tl.store(p_out + o_r, tl.maximum(res, 0).to(tl.int32), mask=m_r)
        tl.store(p_aux + o_r, (res >= 0) & (mass > 0.0), mask=m_r)
    if OP == _OP_RENORM or OP == _OP_MASK:
        p_or = p_out + o_r[:, None].to(tl.int64) * stride_o
        inv = tl.where(mass > 0.0, 1.0 / tl.where(mass > 0.0, mass, 1.0), 0.0)
        if OP == _OP_RENORM:
            fix = all_in
            b_fix = fix[:, None] & b_v
            b_y = tl.where(b_kept, tl.maximum(_value(b_key), 0.0) * inv[:, None], 0.0)
            full = m_r & (fix == 0)
        else:
            fix = fast
            b_fix = fix[:, None] & b_v & (b_kept == 0)
            b_y = tl.full([ROWS, CAP], float("-inf"), tl.float32)
            full = need | stored
        tl.store(p_or + b_idx, b_y.to(p_out.dtype.element_ty), mask=b_fix)
        if full_here:
            _write_rows(p_xr, p_or, o_r, 0, n, thr, inv, full, OP, ROWS, BLOCK)
        else:
            tl.store(p_s + 0, full.to(tl.int32), mask=m_r)
            tl.store(p_s + 1, thr.to(tl.int32), mask=m_r)
            tl.store(p_s + 2, inv.to(tl.int32, bitcast=True), mask=m_r)
    if OP == _OP_TOPK:
        # fast rows: every candidate > s*, then the ties, in index order (the last ties with tie_large)
        kk = top_k_val
        p_vr = p_out + o_r[:, None].to(tl.int64) * kk
        p_ir = p_aux + o_r[:, None].to(tl.int64) * kk
        b_gt = (b_v & (b_key.to(tl.int64) > thr[:, None])).to(tl.int32)
        b_eq = (b_v & (b_key.to(tl.int64) == thr[:, None])).to(tl.int32)
        n_gt = tl.reduce(b_gt, 1, _SUM)
        need_eq = kk - n_gt
        skip = tl.where((o_r * 0 + tie_large) != 0, tl.reduce(b_eq, 1, _SUM) - need_eq, 0)
        b_t = tl.associative_scan(b_eq, 1, _SUM) - 1 - skip[:, None]  # ordinal among the kept ties
        b_pos = tl.where(b_gt > 0, tl.associative_scan(b_gt, 1, _SUM) - 1, n_gt[:, None] + b_t)
        b_st = fast[:, None] & ((b_gt > 0) | ((b_eq > 0) & (b_t >= 0) & (b_t < need_eq[:, None])))
        b_val = tl.load(p_xr + b_idx, mask=b_st, other=0.0)
        tl.store(p_vr + b_pos, b_val, mask=b_st)
        tl.store(p_ir + b_pos, b_idx.to(tl.int64), mask=b_st)
        _topk_rows(p_xr, p_vr, p_ir, n, kk, tl.where(k_on, thr, _KEY_MIN - 1), tie_large, need | stored, BLOCK)


# The tiny configuration's resolve kernel: the same code, never told that the row stride is a multiple
# of 16. With that hint Triton 3.6 fails an assertion lowering its scans for the [16, 32] tiles
# (ScanOpToLLVM.cpp, AddPartialReduceOneWarp; seen on the H200, reproduced by compiling for cuda:90),
# and a 16- or 32-token vocabulary has such strides. The large configuration keeps the hint.
sample_resolve_tiny_kernel = triton.jit(do_not_specialize=_RESOLVE_NO_SPECIALIZE + ["stride_x"])(
    sample_resolve_kernel.fn)


def resolve_kernel_for(cfg: SamplingConfig):
    return sample_resolve_tiny_kernel if cfg.rows > 1 else sample_resolve_kernel


@triton.jit(do_not_specialize=["n", "batch", "chunk"])
def filter_apply_kernel(p_x, p_out, p_state, stride_x, stride_o, n, batch, chunk,
                        OP: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Program (g, c): the filter output of chunk c for the rows the resolve kernel left to
    rewrite (state: full, s*, 1 / mass)."""
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    p_s = p_state + o_r.to(tl.int64) * _NUM_STATE
    full = tl.load(p_s + 0, mask=m_r, other=0) != 0
    thr = tl.load(p_s + 1, mask=m_r, other=0).to(tl.int64)
    inv = tl.load(p_s + 2, mask=m_r, other=0).to(tl.float32, bitcast=True)
    start0 = tl.program_id(1) * chunk
    _write_rows(p_x + o_r[:, None].to(tl.int64) * stride_x, p_out + o_r[:, None].to(tl.int64) * stride_o, o_r,
                start0, tl.minimum(start0 + chunk, n), thr, inv, m_r & full, OP, ROWS, BLOCK)


@triton.jit(do_not_specialize=["n", "batch", "has_idx", "u_stride", "seed_val", "off_val", "seed_stride",
                               "off_stride", "rng_mode"])
def sample_direct_kernel(
    p_x, p_idx, p_out, p_valid, p_u, p_seed, p_off,
    stride_x, n, batch, has_idx, u_stride, seed_val, off_val, seed_stride, off_stride, rng_mode,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Plain sampling from probabilities in one pass that stops at the sample: u in [0, 1) against
    the running sum (FlashInfer's contract: rows sum to 1). A row summing to T < 1 whose u lands
    beyond T is redrawn in a second pass with (u - T) / (1 - T) * T, so such rows are sampled
    exactly in proportion to their entries."""
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    row = o_r.to(tl.int64)
    if has_idx:
        row = tl.load(p_idx + o_r, mask=m_r, other=0).to(tl.int64)
    p_xr = p_x + row[:, None] * stride_x
    u = _uniform(o_r, m_r, 0, p_u, u_stride, p_seed, p_off, seed_val, off_val, seed_stride, off_stride, rng_mode)
    zero = tl.zeros([ROWS], tl.int64)
    thr = zero + _KEY_MIN
    res, tot, hit = _pick_rows(p_xr, zero, zero + n, thr, u * 0.0, u, u * 0.0, m_r, False, BLOCK)
    redo = m_r & (hit == 0) & (tot > 0.0) & (tot < 1.0)
    if tl.reduce(redo.to(tl.int32), 0, _MAX) > 0:
        tau = (u - tot) / tl.where(redo, 1.0 - tot, 1.0) * tot
        res2, _, _ = _pick_rows(p_xr, zero, zero + n, thr, u * 0.0, tau, u * 0.0, redo, False, BLOCK)
        res = tl.where(redo, res2, res)
    tl.store(p_out + o_r, tl.maximum(res, 0).to(tl.int32), mask=m_r)
    tl.store(p_valid + o_r, res >= 0, mask=m_r)


@triton.jit
def _inv_temperature(o_r, m_r, p_temp, temp_val, temp_mode):
    """1 / T per row; temp_mode 0: T = 1, 1: T = temp_val, 2: T = temp[row]."""
    t = tl.full(o_r.shape, 1.0, tl.float32)
    if temp_mode == 1:
        t = t * 0.0 + temp_val
    if temp_mode == 2:
        t = tl.load(p_temp + o_r, mask=m_r, other=1.0).to(tl.float32)
    return 1.0 / t


@triton.jit(do_not_specialize=["n", "batch", "chunk", "temp_val", "temp_mode"])
def softmax_stats_kernel(p_x, p_temp, p_pf, stride_x, n, batch, chunk, temp_val, temp_mode,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """Program (g, c): max and sum of exp(x / T - max) of chunk c (online, per lane)."""
    temp_val = tl.cast(temp_val, tl.float32)
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    inv_t = _inv_temperature(o_r, m_r, p_temp, temp_val, temp_mode)
    p_xr = p_x + o_r[:, None].to(tl.int64) * stride_x
    b_m = tl.full([ROWS, BLOCK], float("-inf"), tl.float32)
    b_s = tl.zeros([ROWS, BLOCK], tl.float32)
    o_b = tl.arange(0, BLOCK)
    start0 = tl.program_id(1) * chunk
    end = tl.minimum(start0 + chunk, n)
    for start in range(start0, end, BLOCK):
        o = start + o_b
        b_mo = m_r[:, None] & (o < end)[None, :]
        # Masked lanes are -inf after the scaling (a negative temperature would turn them to +inf).
        b_x = tl.where(b_mo, tl.load(p_xr + o[None, :], mask=b_mo, other=0.0).to(tl.float32) * inv_t[:, None],
                       float("-inf"))
        b_mn = tl.maximum(b_m, b_x)
        b_safe = tl.where(b_mn == float("-inf"), 0.0, b_mn)
        b_s = b_s * tl.exp(b_m - b_safe) + tl.exp(b_x - b_safe)
        b_m = b_mn
    mx = tl.reduce(b_m, 1, _MAX)
    s = tl.reduce(b_s * tl.exp(b_m - tl.where(mx == float("-inf"), 0.0, mx)[:, None]), 1, _SUM)
    p_f = p_pf + (o_r.to(tl.int64) * tl.num_programs(1) + tl.program_id(1)) * 2
    tl.store(p_f, mx, mask=m_r)
    tl.store(p_f + 1, s, mask=m_r)


@triton.jit(do_not_specialize=["n", "batch", "chunk", "nsplit", "temp_val", "temp_mode"])
def softmax_write_kernel(p_x, p_out, p_temp, p_pf, stride_x, stride_o, n, batch, chunk, nsplit, temp_val, temp_mode,
                         ROWS: tl.constexpr, BLOCK: tl.constexpr, SPLIT_BLOCK: tl.constexpr):
    """Program (g, c): combines the rows' chunk statistics and writes softmax(x / T) of chunk c."""
    temp_val = tl.cast(temp_val, tl.float32)
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    inv_t = _inv_temperature(o_r, m_r, p_temp, temp_val, temp_mode)
    o_c = tl.arange(0, SPLIT_BLOCK)
    b_mc = m_r[:, None] & (o_c < nsplit)[None, :]
    p_f = p_pf + (o_r[:, None].to(tl.int64) * nsplit + o_c[None, :]) * 2
    b_mx = tl.load(p_f, mask=b_mc, other=float("-inf"))
    mx = tl.reduce(b_mx, 1, _MAX)
    safe = tl.where(mx == float("-inf"), 0.0, mx)
    s = tl.reduce(tl.where(b_mc, tl.load(p_f + 1, mask=b_mc, other=0.0) * tl.exp(b_mx - safe[:, None]), 0.0), 1, _SUM)
    inv_s = 1.0 / s
    p_xr = p_x + o_r[:, None].to(tl.int64) * stride_x
    p_or = p_out + o_r[:, None].to(tl.int64) * stride_o
    o_b = tl.arange(0, BLOCK)
    start0 = tl.program_id(1) * chunk
    end = tl.minimum(start0 + chunk, n)
    for start in range(start0, end, BLOCK):
        o = start + o_b
        b_mo = m_r[:, None] & (o < end)[None, :]
        # Masked lanes are -inf after the scaling (a negative temperature would turn them to +inf).
        b_x = tl.where(b_mo, tl.load(p_xr + o[None, :], mask=b_mo, other=0.0).to(tl.float32) * inv_t[:, None],
                       float("-inf"))
        tl.store(p_or + o[None, :], tl.exp(b_x - safe[:, None]) * inv_s[:, None], mask=b_mo)


@triton.jit
def _residual(p_trow, p_drow, resid, o, b_mo):
    """Weights of the final draw: relu(target - draft) at a rejection, target for the bonus token."""
    b_w = tl.load(p_trow + o, mask=b_mo, other=0.0).to(tl.float32)
    b_d = tl.load(p_drow + o, mask=b_mo & resid[:, None], other=0.0).to(tl.float32)
    return tl.where(b_mo, tl.maximum(b_w - b_d, 0.0), 0.0)


@triton.jit(do_not_specialize=["batch", "num_spec", "n", "u_stride", "seed_val", "off_val", "seed_stride",
                               "off_stride", "rng_mode"])
def chain_speculative_kernel(
    p_draft, p_ids, p_target, p_u, p_seed, p_off, p_out, p_acc, p_emit,
    batch, num_spec, n, u_stride, seed_val, off_val, seed_stride, off_stride, rng_mode,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per row: accept draft token i while u_i * draft[i, id] < target[i, id]; at the first
    rejection pos, sample from relu(target[pos] - draft[pos]) (or, all accepted, from
    target[num_spec]) with u_num_spec; out = accepted ids, the sample, then -1. acc += number of
    positions passing the test independently; emit += pos."""
    o_r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    m_r = o_r < batch
    r64 = o_r.to(tl.int64)
    n64 = n.to(tl.int64)
    p_d = p_draft + r64 * num_spec * n64
    p_t = p_target + r64 * (num_spec + 1) * n64
    p_o = p_out + r64 * (num_spec + 1)
    pos = tl.full([ROWS], 0, tl.int32) + num_spec
    accepted = tl.zeros([ROWS], tl.int32)
    for i in range(0, num_spec):
        tok = tl.load(p_ids + r64 * num_spec + i, mask=m_r, other=0).to(tl.int64)
        q = tl.load(p_t + i * n64 + tok, mask=m_r, other=0.0).to(tl.float32)
        p = tl.load(p_d + i * n64 + tok, mask=m_r, other=0.0).to(tl.float32)
        u = _uniform(o_r, m_r, i, p_u, u_stride, p_seed, p_off, seed_val, off_val, seed_stride, off_stride, rng_mode)
        ok = u * p < q
        accepted += ok.to(tl.int32)
        pos = tl.where((ok == 0) & (pos == num_spec), i, pos)
        tl.store(p_o + i, tl.where(i < pos, tok, -1).to(tl.int32), mask=m_r)
    tl.store(p_acc + o_r, tl.load(p_acc + o_r, mask=m_r, other=0) + accepted, mask=m_r)
    tl.store(p_emit + o_r, tl.load(p_emit + o_r, mask=m_r, other=0) + pos, mask=m_r)
    tl.store(p_o + num_spec, tl.full([ROWS], -1, tl.int32), mask=m_r)
    # the token at pos (overwrites the -1 above when every draft token was accepted)
    p_trow = (p_t + pos.to(tl.int64) * n64)[:, None]
    p_drow = (p_d + pos.to(tl.int64) * n64)[:, None]
    resid = pos < num_spec
    o_b = tl.arange(0, BLOCK)
    b_s = tl.zeros([ROWS, BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        o = start + o_b
        b_s += _residual(p_trow, p_drow, resid, o[None, :], m_r[:, None] & (o < n)[None, :])
    total = tl.reduce(b_s, 1, _SUM)
    u = _uniform(o_r, m_r, num_spec, p_u, u_stride, p_seed, p_off, seed_val, off_val, seed_stride, off_stride,
                 rng_mode)
    target = u * total
    run = tl.zeros([ROWS], tl.float32)
    hit = tl.full([ROWS], -1, tl.int32)
    hit_run = run
    last = tl.full([ROWS], -1, tl.int32)
    last_run = run
    start = 0
    go = m_r
    while tl.reduce(go.to(tl.int32), 0, _MAX) > 0:
        o = start + o_b
        s = tl.reduce(_residual(p_trow, p_drow, resid, o[None, :], go[:, None] & (o < n)[None, :]), 1, _SUM)
        now = go & (run + s > target)
        hit = tl.where(now, start, hit)
        hit_run = tl.where(now, run, hit_run)
        last = tl.where(go & (s > 0.0), start, last)
        last_run = tl.where(go & (s > 0.0), run, last_run)
        run += s
        start += BLOCK
        go = go & (now == 0) & (start < n)
    blk = tl.where(hit >= 0, hit, last)
    brun = tl.where(hit >= 0, hit_run, last_run)
    o = blk[:, None] + o_b[None, :]
    b_mo = (m_r & (blk >= 0))[:, None] & (o < n)
    b_w = _residual(p_trow, p_drow, resid, o, b_mo)
    b_c = tl.associative_scan(b_w, 1, _SUM) + brun[:, None]
    first = tl.reduce(tl.where((b_w > 0.0) & (b_c > target[:, None]), o, 2**30), 1, _MIN)
    res = tl.where(first < 2**30, first, tl.reduce(tl.where(b_w > 0.0, o, -1), 1, _MAX))
    tl.store(p_o + pos, tl.maximum(res, 0).to(tl.int32), mask=m_r)


# ---------------------------------------------------------------------------------------------
# ahead-of-time configurations
# ---------------------------------------------------------------------------------------------

_I64_ARGS = {"stride_x", "stride_o", "seed_val", "off_val"}
_F32_ARGS = {"top_p_val", "min_p_val", "temp_val"}


def _sig(kernel, **pointers):
    """Signature of a kernel: pointers as given, i64 strides/seeds, fp32 float values, other
    scalars i32, constexprs as such."""
    sig = {}
    for name, is_constexpr in kernel_parameters(kernel):
        if is_constexpr:
            sig[name] = "constexpr"
        elif name.startswith("p_"):
            sig[name] = pointers[name]
        else:
            sig[name] = "i64" if name in _I64_ARGS else "fp32" if name in _F32_ARGS else "i32"
    return sig


def pass_constexprs(cfg: SamplingConfig, op: int, is_logits: bool) -> dict:
    return dict(OP=op, IS_LOGITS=is_logits, ROWS=cfg.rows, BLOCK=cfg.block, SAMPLE=cfg.sample, BINS=cfg.bins,
                CAP=cfg.cap, STAGES=cfg.stages)


def resolve_constexprs(cfg: SamplingConfig, op: int, is_logits: bool) -> dict:
    return dict(OP=op, IS_LOGITS=is_logits, ROWS=cfg.rows, BLOCK=cfg.block, CAP=cfg.cap, SPLIT_BLOCK=cfg.split_max,
                PIVOTS=cfg.pivots, SEARCH_BLOCK=cfg.search_block)


# (op, input dtype, is_logits) variants each config's pass/resolve kernels are built for: samplers on
# float32 probabilities or logits of any float dtype; renorm on probabilities and mask / top_k on
# values of any float dtype. top_k streams with the mask's pass variant.
def _variants(cfg: SamplingConfig):
    import torch

    samplers = [(OP_SAMPLE, torch.float32, False)] + [(OP_SAMPLE, dt, True)
                                                        for dt in (torch.float32, torch.float16, torch.bfloat16)]
    if cfg is TINY:
        return samplers, samplers
    floats = (torch.float32, torch.float16, torch.bfloat16)
    filters = [(OP_RENORM, dt, False) for dt in floats] + [(OP_MASK, dt, True) for dt in floats]
    return samplers + filters, samplers + filters + [(OP_TOPK, dt, True) for dt in floats]


def _kind(is_logits: bool) -> str:
    return "logits" if is_logits else "probs"


def aot_configs():
    import torch

    cfgs = []
    for cfg in (TINY, LARGE):
        hw = hip_warps(cfg.warps)
        passes, resolves = _variants(cfg)
        for op, dt, is_logits in passes:
            out = ptr(dt) if op in (OP_RENORM, OP_MASK) else "*i32"
            sig = _sig(sample_pass_kernel, p_x=ptr(dt), p_idx="*i32", p_topk="*i32", p_topp="*fp32", p_minp="*fp32",
                       p_out=out, p_pi="*i32", p_pf="*fp32", p_ck="*i32", p_ci="*i32")
            cfgs.append(AotConfig(sample_pass_kernel, sig, pass_constexprs(cfg, op, is_logits), num_warps=cfg.warps,
                                  hip_num_warps=hw, name=f"sampling_pass_op{op}_{_kind(is_logits)}_{dt}_{cfg.name}"))
        for op, dt, is_logits in resolves:
            out, aux = {OP_SAMPLE: ("*i32", "*i1"), OP_TOPK: (ptr(dt), "*i64")}.get(op, (ptr(dt), "*i1"))
            sig = _sig(resolve_kernel_for(cfg), p_x=ptr(dt), p_idx="*i32", p_topk="*i32", p_topp="*fp32",
                       p_minp="*fp32", p_out=out, p_aux=aux, p_pi="*i32", p_pf="*fp32", p_ck="*i32", p_ci="*i32",
                       p_state="*i32", p_u="*fp32", p_seed="*i64", p_off="*i64")
            cfgs.append(AotConfig(resolve_kernel_for(cfg), sig, resolve_constexprs(cfg, op, is_logits),
                                  num_warps=cfg.resolve_warps, hip_num_warps=hip_warps(cfg.resolve_warps),
                                  name=f"sampling_resolve_op{op}_{_kind(is_logits)}_{dt}_{cfg.name}"))
        sig = _sig(sample_direct_kernel, p_x="*fp32", p_idx="*i32", p_out="*i32", p_valid="*i1", p_u="*fp32",
                   p_seed="*i64", p_off="*i64")
        cfgs.append(AotConfig(sample_direct_kernel, sig, dict(ROWS=cfg.rows, BLOCK=cfg.direct_block), num_warps=cfg.warps,
                              hip_num_warps=hw, name=f"sampling_direct_{cfg.name}"))
        sig = _sig(chain_speculative_kernel, p_draft="*fp32", p_ids="*i32", p_target="*fp32", p_u="*fp32",
                   p_seed="*i64", p_off="*i64", p_out="*i32", p_acc="*i32", p_emit="*i32")
        cfgs.append(AotConfig(chain_speculative_kernel, sig, dict(ROWS=cfg.rows, BLOCK=cfg.block), num_warps=cfg.warps,
                              hip_num_warps=hw, name=f"sampling_chain_speculative_{cfg.name}"))
        if cfg is TINY:
            continue
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            sig = _sig(filter_apply_kernel, p_x=ptr(dt), p_out=ptr(dt), p_state="*i32")
            cfgs.append(AotConfig(filter_apply_kernel, sig, dict(OP=OP_RENORM, ROWS=cfg.rows, BLOCK=cfg.block),
                                  num_warps=cfg.warps, hip_num_warps=hw, name=f"sampling_apply_renorm_{dt}_{cfg.name}"))
            sig = _sig(softmax_stats_kernel, p_x=ptr(dt), p_temp="*fp32", p_pf="*fp32")
            cfgs.append(AotConfig(softmax_stats_kernel, sig, dict(ROWS=cfg.rows, BLOCK=cfg.block), num_warps=cfg.warps,
                                  hip_num_warps=hw, name=f"sampling_softmax_stats_{dt}_{cfg.name}"))
            sig = _sig(softmax_write_kernel, p_x=ptr(dt), p_out="*fp32", p_temp="*fp32", p_pf="*fp32")
            cfgs.append(AotConfig(softmax_write_kernel, sig,
                                  dict(ROWS=cfg.rows, BLOCK=cfg.block, SPLIT_BLOCK=cfg.split_max), num_warps=cfg.warps,
                                  hip_num_warps=hw, name=f"sampling_softmax_write_{dt}_{cfg.name}"))
    return cfgs
