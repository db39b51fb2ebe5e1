"""FlashInfer's sampling API (``flashinfer.sampling``) and ``top_k`` selection on Triton kernels.

Every filter keeps ``{x >= threshold}`` for one threshold (ties at it are all kept, as in
FlashInfer); there is no sort. Samplers, the renorm/mask filters and ``top_k`` share one
machinery (``kernels/sampling.py``): a streaming pass, split over several programs per row when
the batch is small, collects the elements of a bracket estimated from a sample of the row; a
resolve kernel finds the exact threshold among them and draws the sample (or fixes up the
filtered row). The common case reads the input once (filters also write it once); an exact
bisection over the whole row is the fallback when the bracket misses.

Randomness: one uniform per output row, from ``torch.rand(..., generator=generator)`` on the
device (no host sync; under CUDA-graph capture torch advances the generator on every replay),
or, with explicit ``seed`` and ``offset`` (ints, or int64 tensors of length 1 or batch_size),
from Philox in the kernel at counter (offset, row): with tensors the kernel reads them from
device memory, so a captured graph replays with whatever the tensors hold. The exact random
streams differ from FlashInfer's, the distributions do not. All kernels are deterministic (no
atomics; fixed reduction orders), whatever ``deterministic`` says.

Under ``torch.compile`` every hot path goes through a ``torch.library`` custom op (registered
below, with a fake implementation); eager calls go straight to the launchers.
"""

from __future__ import annotations

import math
from enum import IntEnum
from numbers import Integral, Real
from typing import Optional, Tuple, Union

import torch

from . import _checks
from ._utils import check_tensor, interpreter_active, num_compute_units
from .kernels import sampling as K

__all__ = [
    "softmax",
    "sampling_from_probs",
    "sampling_from_logits",
    "top_k_sampling_from_probs",
    "top_p_sampling_from_probs",
    "min_p_sampling_from_probs",
    "top_k_top_p_sampling_from_probs",
    "top_k_top_p_sampling_from_logits",
    "top_k_renorm_probs",
    "top_p_renorm_probs",
    "top_k_renorm_prob",
    "top_p_renorm_prob",
    "top_k_mask_logits",
    "chain_speculative_sampling",
    "top_k",
    "TopKTieBreak",
]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_IS_HIP = torch.version.hip is not None  # AMD: 64-lane wavefronts, so fewer warps a block
_DUMMIES = {}


def _dummy(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 1-element tensor standing in for an absent pointer (keeps the kernel signature fixed)."""
    key = (device, dtype)
    t = _DUMMIES.get(key)
    if t is None:
        t = _DUMMIES[key] = torch.zeros(1, dtype=dtype, device=device)
    return t


def _warps(n: int) -> int:
    return K.hip_warps(n) if _IS_HIP else n


def _split(batch: int, vocab: int, device: torch.device, cfg: K.SamplingConfig, split=None):
    return K.split_for(batch, vocab, num_compute_units(device), cfg, split)


def _grid_rows(batch: int, cfg: K.SamplingConfig) -> int:
    return -(-batch // cfg.rows)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _rng_args(rng, device):
    """Kernel arguments of the random source: (u [batch, per_row] float32) or (seed_arr,
    seed_val, off_arr, off_val) with arrays of length 1 or batch_size."""
    u, seed_arr, seed_val, off_arr, off_val = rng
    i64 = _dummy(device, torch.int64)
    if u is not None:
        return dict(p_u=u, u_stride=u.shape[1], p_seed=i64, p_off=i64, seed_val=0, off_val=0, seed_stride=-1,
                    off_stride=-1, rng_mode=0)

    def stride(a):
        return -1 if a is None else (0 if a.shape[0] == 1 else 1)

    return dict(p_u=_dummy(device, torch.float32), u_stride=0, p_seed=seed_arr if seed_arr is not None else i64,
                p_off=off_arr if off_arr is not None else i64, seed_val=seed_val, off_val=off_val,
                seed_stride=stride(seed_arr), off_stride=stride(off_arr), rng_mode=1)


def _filter_args(x, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, mode_k, mode_p, mode_m):
    dev = x.device
    return dict(p_topk=k_arr if k_arr is not None else _dummy(dev, torch.int32),
                p_topp=p_arr if p_arr is not None else _dummy(dev, torch.float32),
                p_minp=mp_arr if mp_arr is not None else _dummy(dev, torch.float32),
                top_k_val=int(k_val), top_p_val=float(p_val), min_p_val=float(mp_val), mode_k=mode_k, mode_p=mode_p,
                mode_m=mode_m)


def _workspace(batch, split, chunk, cfg, dev, need_w=True):
    # Candidate slots per (row, chunk): twice what the resolve kernel holds in registers, so a
    # bracket that held s* with up to 2 CAP candidates in one chunk still resolves over them
    # (K.PATH_STORED) instead of searching the whole row.
    region = min(2 * cfg.cap, chunk)
    pi = torch.empty(batch * split * K.NUM_IPART, dtype=torch.int32, device=dev)
    pf = (torch.empty(batch * split * K.NUM_FPART, dtype=torch.float32, device=dev) if need_w
          else _dummy(dev, torch.float32))
    ck = torch.empty(batch * split * region, dtype=torch.int32, device=dev)
    ci = torch.empty(batch * split * region, dtype=torch.int32, device=dev)
    return region, pi, pf, ck, ci


def _run_pass_resolve(x, indices, fargs, joint, op, is_logits, cfg, out, aux, rng, stride_o=0,
                      spec_write=0, bracket=1, tie_large=0, split=None):
    """Launch the pass kernel over (row groups, split) and the resolve kernel over row groups.
    Returns (split, chunk, state): the filters' apply kernel runs when split is above 1 and reads
    the resolve state (``K.NUM_STATE`` ints a row; the last is the ``K.PATH_*`` the row took)."""
    dev = x.device
    batch = indices.shape[0] if indices is not None else x.shape[0]
    n = x.shape[1]
    split, chunk = _split(batch, n, dev, cfg, split)
    state = torch.empty(batch * K.NUM_STATE, dtype=torch.int32, device=dev)
    region, pi, pf, ck, ci = _workspace(batch, split, chunk, cfg, dev, op in (K.OP_SAMPLE, K.OP_RENORM))
    idx = indices if indices is not None else _dummy(dev, torch.int32)
    groups = _grid_rows(batch, cfg)
    pass_op = K.OP_MASK if op == K.OP_TOPK else op
    K.sample_pass_kernel[(groups, split)](
        x, idx, fargs["p_topk"], fargs["p_topp"], fargs["p_minp"], out if spec_write else _dummy(dev, out.dtype),
        pi, pf, ck, ci, x.stride(0), stride_o, n, batch, chunk, region, int(indices is not None),
        fargs["top_k_val"], fargs["top_p_val"], fargs["min_p_val"], fargs["mode_k"], fargs["mode_p"],
        fargs["mode_m"], int(joint), int(spec_write), int(bracket),
        **K.pass_constexprs(cfg, pass_op, is_logits), num_warps=_warps(cfg.warps),
    )
    r = _rng_args(rng, dev) if rng is not None else _rng_args((_dummy(dev, torch.float32)[None], None, 0, None, 0), dev)
    K.resolve_kernel_for(cfg)[(groups,)](
        x, idx, fargs["p_topk"], fargs["p_topp"], fargs["p_minp"], out, aux, pi, pf, ck, ci,
        state, r["p_u"], r["p_seed"], r["p_off"],
        x.stride(0), stride_o, n, batch, chunk, region, split, int(indices is not None),
        fargs["top_k_val"], fargs["top_p_val"], fargs["min_p_val"], fargs["mode_k"], fargs["mode_p"],
        fargs["mode_m"], int(joint), int(split == 1 or op == K.OP_MASK), int(tie_large),
        r["u_stride"], r["seed_val"], r["off_val"], r["seed_stride"], r["off_stride"], r["rng_mode"],
        **K.resolve_constexprs(cfg, op, is_logits), num_warps=_warps(cfg.resolve_warps),
    )
    return split, chunk, state


def _paths(state, batch):
    """The ``K.PATH_*`` each row took, from a resolve state."""
    return state.view(batch, K.NUM_STATE)[:, 3]


def _launch_sample(x, indices, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, mode_k, mode_p, mode_m, joint, is_logits,
                   u, seed_arr, seed_val, off_arr, off_val, *, config=None, split=None, with_paths=False):
    """``config`` / ``split``: overrides of the table (benchmarks/tune_sampling.py, path tests);
    ``with_paths``: also return the ``K.PATH_*`` of each row (int32 [batch])."""
    dev = x.device
    batch = indices.shape[0] if indices is not None else x.shape[0]
    samples = torch.empty(batch, dtype=torch.int32, device=dev)
    valid = torch.empty(batch, dtype=torch.bool, device=dev)
    if batch == 0:
        return (samples, valid, samples) if with_paths else (samples, valid)
    rng = (u, seed_arr, seed_val, off_arr, off_val)
    cfg = config or K.sampling_config(x.shape[1], interpreter=interpreter_active())
    plain = mode_k == 0 and mode_p == 0 and mode_m == 0
    if plain and not is_logits and (_split(batch, x.shape[1], dev, cfg, split)[0] == 1 or (
            split is None and _grid_rows(batch, cfg) >= K.DIRECT_MIN_GROUPS_PER_CU * num_compute_units(dev))):
        r = _rng_args(rng, dev)
        K.sample_direct_kernel[(_grid_rows(batch, cfg),)](
            x, indices if indices is not None else _dummy(dev, torch.int32), samples, valid, r["p_u"], r["p_seed"],
            r["p_off"], x.stride(0), x.shape[1], batch, int(indices is not None), r["u_stride"], r["seed_val"],
            r["off_val"], r["seed_stride"], r["off_stride"], r["rng_mode"], ROWS=cfg.rows, BLOCK=cfg.direct_block,
            num_warps=_warps(cfg.warps),
        )
        return (samples, valid, torch.zeros_like(samples)) if with_paths else (samples, valid)
    if plain and split is None:
        split = max(_split(batch, x.shape[1], dev, cfg)[0], min(K.PLAIN_LOGITS_MIN_SPLIT, cfg.split_max))
    fargs = _filter_args(x, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, mode_k, mode_p, mode_m)
    _, _, state = _run_pass_resolve(x, indices, fargs, joint, K.OP_SAMPLE, is_logits, cfg, samples, valid, rng,
                                    split=split)
    return (samples, valid, _paths(state, batch)) if with_paths else (samples, valid)


@torch.library.custom_op("flashinfer_triton::sampling_sample", mutates_args=())
def _sample_op(x: torch.Tensor, indices: Optional[torch.Tensor], k_arr: Optional[torch.Tensor], k_val: int,
               p_arr: Optional[torch.Tensor], p_val: float, mp_arr: Optional[torch.Tensor], mp_val: float,
               mode_k: int, mode_p: int, mode_m: int, joint: bool, is_logits: bool, u: Optional[torch.Tensor],
               seed_arr: Optional[torch.Tensor], seed_val: int, off_arr: Optional[torch.Tensor],
               off_val: int) -> Tuple[torch.Tensor, torch.Tensor]:
    return _launch_sample(x, indices, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, mode_k, mode_p, mode_m, joint,
                          is_logits, u, seed_arr, seed_val, off_arr, off_val)


@_sample_op.register_fake
def _(x, indices, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, mode_k, mode_p, mode_m, joint, is_logits, u, seed_arr,
      seed_val, off_arr, off_val):
    batch = indices.shape[0] if indices is not None else x.shape[0]
    return x.new_empty(batch, dtype=torch.int32), x.new_empty(batch, dtype=torch.bool)


def _launch_filter(x, k_arr, k_val, p_arr, p_val, mode_k, mode_p, op, *, config=None, split=None,
                   with_paths=False):
    dev = x.device
    out = torch.empty_like(x)
    if x.shape[0] == 0:
        return (out, out.new_empty(0, dtype=torch.int32)) if with_paths else out
    cfg = config or K.sampling_config(x.shape[1], tiny_ok=False)
    fargs = _filter_args(x, k_arr, k_val, p_arr, p_val, None, 0.0, mode_k, mode_p, 0)
    split, chunk, state = _run_pass_resolve(x, None, fargs, True, op, op == K.OP_MASK, cfg, out,
                                            _dummy(dev, torch.bool), None, stride_o=out.stride(0), spec_write=1,
                                            split=split)
    if split > 1 and op == K.OP_RENORM:  # the mask rewrites a row only on the fallback, in the resolve kernel
        K.filter_apply_kernel[(_grid_rows(x.shape[0], cfg), split)](
            x, out, state, x.stride(0), out.stride(0), x.shape[1], x.shape[0], chunk, OP=op, ROWS=cfg.rows,
            BLOCK=cfg.block, num_warps=_warps(cfg.warps),
        )
    return (out, _paths(state, x.shape[0])) if with_paths else out


@torch.library.custom_op("flashinfer_triton::sampling_filter", mutates_args=())
def _filter_op(x: torch.Tensor, k_arr: Optional[torch.Tensor], k_val: int, p_arr: Optional[torch.Tensor],
               p_val: float, mode_k: int, mode_p: int, op: int) -> torch.Tensor:
    return _launch_filter(x, k_arr, k_val, p_arr, p_val, mode_k, mode_p, op)


@_filter_op.register_fake
def _(x, k_arr, k_val, p_arr, p_val, mode_k, mode_p, op):
    return torch.empty_like(x)


def _launch_top_k(x, k, tie_large, *, config=None, split=None, with_paths=False):
    dev = x.device
    values = torch.empty((x.shape[0], k), dtype=x.dtype, device=dev)
    indices = torch.empty((x.shape[0], k), dtype=torch.int64, device=dev)
    if x.shape[0] == 0:
        return (values, indices, indices.new_empty(0, dtype=torch.int32)) if with_paths else (values, indices)
    cfg = config or K.sampling_config(x.shape[1], tiny_ok=False)
    fargs = _filter_args(x, None, k, None, 1.0, None, 0.0, 1, 0, 0)
    _, _, state = _run_pass_resolve(x, None, fargs, True, K.OP_TOPK, True, cfg, values, indices, None, bracket=0,
                                    tie_large=int(tie_large), split=split)
    return (values, indices, _paths(state, x.shape[0])) if with_paths else (values, indices)


@torch.library.custom_op("flashinfer_triton::top_k", mutates_args=())
def _top_k_op(x: torch.Tensor, k: int, tie_large: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _launch_top_k(x, k, tie_large)


@_top_k_op.register_fake
def _(x, k, tie_large):
    return x.new_empty((x.shape[0], k)), x.new_empty((x.shape[0], k), dtype=torch.int64)


def _launch_softmax(logits, t_arr, t_val, t_mode, *, config=None, split=None):
    dev = logits.device
    batch, n = logits.shape
    out = torch.empty((batch, n), dtype=torch.float32, device=dev)
    if batch == 0:
        return out
    cfg = config or K.sampling_config(n, tiny_ok=False)
    split, chunk = _split(batch, n, dev, cfg, split)
    stats = torch.empty(batch * split * 2, dtype=torch.float32, device=dev)
    t = t_arr if t_arr is not None else _dummy(dev, torch.float32)
    grid = (_grid_rows(batch, cfg), split)
    K.softmax_stats_kernel[grid](logits, t, stats, logits.stride(0), n, batch, chunk, float(t_val), t_mode,
                                 ROWS=cfg.rows, BLOCK=cfg.block, num_warps=_warps(cfg.warps))
    K.softmax_write_kernel[grid](logits, out, t, stats, logits.stride(0), out.stride(0), n, batch, chunk, split,
                                 float(t_val), t_mode, ROWS=cfg.rows, BLOCK=cfg.block, SPLIT_BLOCK=cfg.split_max,
                                 num_warps=_warps(cfg.warps))
    return out


@torch.library.custom_op("flashinfer_triton::sampling_softmax", mutates_args=())
def _softmax_op(logits: torch.Tensor, t_arr: Optional[torch.Tensor], t_val: float, t_mode: int) -> torch.Tensor:
    return _launch_softmax(logits, t_arr, t_val, t_mode)


@_softmax_op.register_fake
def _(logits, t_arr, t_val, t_mode):
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)


def _launch_chain(draft_probs, draft_ids, target_probs, acc, emit, u, seed_arr, seed_val, off_arr, off_val):
    b, n_spec, vocab = draft_probs.shape
    dev = draft_probs.device
    out = torch.empty((b, n_spec + 1), dtype=torch.int32, device=dev)
    if b == 0:
        return out
    cfg = K.sampling_config(vocab, interpreter=interpreter_active())
    r = _rng_args((u, seed_arr, seed_val, off_arr, off_val), dev)
    K.chain_speculative_kernel[(_grid_rows(b, cfg),)](
        draft_probs, draft_ids, target_probs, r["p_u"], r["p_seed"], r["p_off"], out, acc, emit, b, n_spec, vocab,
        r["u_stride"], r["seed_val"], r["off_val"], r["seed_stride"], r["off_stride"], r["rng_mode"],
        ROWS=cfg.rows, BLOCK=cfg.block, num_warps=_warps(cfg.warps),
    )
    return out


@torch.library.custom_op("flashinfer_triton::chain_speculative_sampling", mutates_args=("acc", "emit"))
def _chain_op(draft_probs: torch.Tensor, draft_ids: torch.Tensor, target_probs: torch.Tensor, acc: torch.Tensor,
              emit: torch.Tensor, u: Optional[torch.Tensor], seed_arr: Optional[torch.Tensor], seed_val: int,
              off_arr: Optional[torch.Tensor], off_val: int) -> torch.Tensor:
    return _launch_chain(draft_probs, draft_ids, target_probs, acc, emit, u, seed_arr, seed_val, off_arr, off_val)


@_chain_op.register_fake
def _(draft_probs, draft_ids, target_probs, acc, emit, u, seed_arr, seed_val, off_arr, off_val):
    b, n_spec, _ = draft_probs.shape
    return draft_probs.new_empty((b, n_spec + 1), dtype=torch.int32)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _sample(*args):
    return (_sample_op if _compiling() else _launch_sample)(*args)


def _filter(*args):
    return (_filter_op if _compiling() else _launch_filter)(*args)


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------


def _check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreter_active():
        raise ValueError(f"{name}: expected a GPU tensor (CPU tensors need TRITON_INTERPRET=1), got one on cpu")


def _check_matrix(name: str, t, dtypes=_FLOATS) -> torch.Tensor:
    check_tensor(name, t, dtypes=dtypes, ndim=2)
    _check_device(name, t)
    if t.shape[1] == 0:
        raise ValueError(f"{name}: the vocabulary (last) dimension is empty")
    if t.shape[1] >= 2**30:
        raise ValueError(f"{name}: vocabulary size {t.shape[1]} is too large (at most 2^30 - 1)")
    if t.stride(1) != 1:
        t = t.contiguous()
    return t


def _check_indices(indices, x: torch.Tensor) -> Optional[torch.Tensor]:
    """int32 view of ``indices`` (the kernels index with int32; int64 indices are converted)."""
    if indices is None:
        return None
    check_tensor("indices", indices, dtypes=(torch.int32, torch.int64), ndim=1, device=x.device)
    if _checks.ENABLED:
        _checks.check_in_range("indices", indices, 0, x.shape[0], "a row of the input")
    return indices.to(torch.int32).contiguous()


def _scalar_or_rows(name: str, v, batch: int, device, integer: bool):
    """(tensor or None, scalar, mode): mode 1 for a scalar, 2 for a per-row tensor of shape [batch]."""
    if isinstance(v, torch.Tensor):
        if integer:
            check_tensor(name, v, dtypes=(torch.int32, torch.int64), ndim=1, device=device)
        else:
            check_tensor(name, v, dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64), ndim=1,
                         device=device)
        if v.shape[0] != batch:
            raise ValueError(f"{name}: expected shape [{batch}] (one value per output row), got {list(v.shape)}")
        v = v.to(torch.int32 if integer else torch.float32).contiguous()
        if _checks.ENABLED and not integer:
            _checks.check_no_nan(name, v)
            if name == "temperature":
                _checks.require(v == 0, lambda i: f"temperature[{i[0]}] = 0: expected a non-zero temperature")
        return v, 0, 2
    if isinstance(v, bool):
        raise TypeError(f"{name}: expected {'an int' if integer else 'a float'} or a tensor, got bool")
    if integer:
        if not isinstance(v, Integral):
            raise TypeError(f"{name}: expected an int or an int32/int64 tensor of shape [{batch}], got "
                            f"{type(v).__name__}")
        v = int(v)
        if not -2**31 <= v < 2**31:
            raise ValueError(f"{name}: {v} does not fit in int32")
        return None, v, 1
    if not isinstance(v, Real):
        raise TypeError(f"{name}: expected a float or a float tensor of shape [{batch}], got {type(v).__name__}")
    v = float(v)
    if math.isnan(v):  # would silently keep every token (top_p, min_p) or give NaN probabilities
        raise ValueError(f"{name}: expected a number, got nan")
    if name == "temperature" and v == 0:
        raise ValueError("temperature: expected a non-zero temperature, got 0 (softmax(logits / 0) is undefined; "
                         "use argmax for greedy decoding)")
    return None, v, 1


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def _seed_offset_part(name, v, batch, device):
    """(tensor or None, value): an int64 tensor of 1 or ``batch`` entries read by the kernel, or
    an int (taken modulo 2^64, as FlashInfer's uint64)."""
    if isinstance(v, torch.Tensor):
        dtypes = (torch.int64,) + ((torch.uint64,) if hasattr(torch, "uint64") else ())
        check_tensor(name, v, dtypes=dtypes, ndim=1, device=device)
        if v.shape[0] not in (1, batch):
            raise ValueError(f"{name}: expected 1 or {batch} entries, got {v.shape[0]}")
        return v.view(torch.int64).contiguous(), 0
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{name}: expected an int or an int64 tensor, got {type(v).__name__}")
    v = int(v) % 2**64
    return None, v - 2**64 if v >= 2**63 else v


def _rng(batch: int, per_row: int, device, generator, seed, offset):
    """(u, seed_arr, seed_val, off_arr, off_val): ``u`` [batch, per_row] float32 uniforms from
    ``generator`` (None when seed and offset are given: the kernel runs Philox itself)."""
    _check_generator(generator)
    if seed is None and offset is None:
        u = torch.rand((batch, per_row), device=device, generator=generator, dtype=torch.float32)
        return u, None, 0, None, 0
    if seed is None or offset is None:
        raise ValueError("seed and offset: give both or neither")
    if isinstance(seed, torch.Tensor) != isinstance(offset, torch.Tensor):
        raise ValueError("seed and offset: must both be tensors or both be ints")
    s_arr, s_val = _seed_offset_part("seed", seed, batch, device)
    o_arr, o_val = _seed_offset_part("offset", offset, batch, device)
    return None, s_arr, s_val, o_arr, o_val


def _check_nan(name: str, t: torch.Tensor, check_nan: bool) -> None:
    if check_nan and bool(torch.isnan(t).any()):
        raise ValueError(f"Input {name} contains NaN.")


def _as_probs(probs) -> torch.Tensor:
    probs = _check_matrix("probs", probs)
    return probs if probs.dtype == torch.float32 else probs.float()


def _sample_probs(probs, indices, generator, seed, offset, check_nan, return_valid, k=None, p=None, min_p=None,
                  joint=False, is_logits=False, name="probs"):
    if is_logits:
        x = _check_matrix(name, probs)
    else:
        x = _as_probs(probs)
    out_dtype = indices.dtype if isinstance(indices, torch.Tensor) else torch.int32
    indices = _check_indices(indices, x)
    _check_nan(name, x, check_nan)
    batch = indices.shape[0] if indices is not None else x.shape[0]
    k_arr, k_val, mode_k = (None, 0, 0) if k is None else _scalar_or_rows("top_k", k, batch, x.device, True)
    p_arr, p_val, mode_p = (None, 1.0, 0) if p is None else _scalar_or_rows("top_p", p, batch, x.device, False)
    m_arr, m_val, mode_m = (None, 0.0, 0) if min_p is None else _scalar_or_rows("min_p", min_p, batch, x.device,
                                                                               False)
    rng = _rng(batch, 1, x.device, generator, seed, offset)
    samples, valid = _sample(x, indices, k_arr, k_val, p_arr, p_val, m_arr, m_val, mode_k, mode_p, mode_m, joint,
                             is_logits, *rng)
    if out_dtype != torch.int32:
        samples = samples.to(out_dtype)
    return (samples, valid) if return_valid else samples


def _check_order(filter_apply_order: str) -> bool:
    if filter_apply_order not in ("top_k_first", "joint"):
        raise ValueError(f"filter_apply_order: expected 'top_k_first' or 'joint', got {filter_apply_order!r}")
    return filter_apply_order == "joint"


_COMMON_DOC = """
    indices: Optional[torch.Tensor]
        shape: ``[batch_size]``, dtype: ``torch.int32`` or ``torch.int64``; output ``i`` is drawn
        from row ``indices[i]``. The output then has the dtype of ``indices``. Default: row ``i``.
    deterministic: bool
        Accepted for compatibility; the kernels are always deterministic.
    generator: Optional[torch.Generator]
        Generator on the device of the input for the one uniform per output row (``torch.rand``;
        replay-safe under CUDA-graph capture).
    check_nan: bool
        Raise ``ValueError`` if the input holds a NaN (a host sync). Default ``False``.
    seed, offset: Optional[int or torch.Tensor]
        Both or neither; both ints or both int64/uint64 tensors of shape ``[1]`` or
        ``[batch_size]`` (one per output row). The uniform of output row ``i`` is then Philox
        with key ``seed`` at counter ``(offset, i)``, computed in the kernel; tensors are read
        from device memory, so a captured CUDA graph replays with the values they hold at
        replay (advance ``offset`` between calls for fresh samples).
"""


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def softmax(logits: torch.Tensor, temperature: Optional[Union[torch.Tensor, float]] = None,
            enable_pdl: Optional[bool] = None) -> torch.Tensor:
    """Safe softmax with temperature scaling: ``softmax(logits / temperature)``.

    Parameters
    ----------
    logits: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype: float16, bfloat16 or float32.
    temperature: Optional[Union[torch.Tensor, float]]
        A float, or a tensor of shape ``[batch_size]`` (float16/bfloat16/float32/float64) with one
        temperature per row. ``None`` means 1.
    enable_pdl: Optional[bool]
        Programmatic dependent launch is a CUDA launch attribute Triton does not expose; accepted
        and without effect (results do not depend on it).

    Returns
    -------
    probs: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype: float32.
    """
    logits = _check_matrix("logits", logits)
    if temperature is None:
        t_arr, t_val, t_mode = None, 1.0, 0
    else:
        t_arr, t_val, t_mode = _scalar_or_rows("temperature", temperature, logits.shape[0], logits.device, False)
    return (_softmax_op if _compiling() else _launch_softmax)(logits, t_arr, t_val, t_mode)


def sampling_from_probs(probs: torch.Tensor, indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                        generator: Optional[torch.Generator] = None, check_nan: bool = False,
                        seed: Optional[Union[int, torch.Tensor]] = None,
                        offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """Categorical sampling from probabilities (inverse CDF in index order, one uniform per
    output row).

    As in FlashInfer, the uniform ``u`` is compared with the running sum of the row, so rows are
    expected to sum to 1. A row summing to ``T < 1`` is still sampled in proportion to its
    entries (a ``u`` beyond ``T`` is redrawn as ``(u - T) / (1 - T) * T``); a row summing to more
    than 1 is sampled from its first unit of mass. Zero entries are never sampled.

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
    """ + _COMMON_DOC + """
    return_valid: bool
        Also return ``valid``, shape ``[batch_size]``, dtype bool: the row had positive mass.

    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``).
    """
    return _sample_probs(probs, indices, generator, seed, offset, check_nan, return_valid)


def sampling_from_logits(logits: torch.Tensor, indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                         generator: Optional[torch.Generator] = None, check_nan: bool = False,
                         seed: Optional[Union[int, torch.Tensor]] = None,
                         offset: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
    """Categorical sampling from ``softmax(logits)``, fused (no probabilities are written).

    Parameters
    ----------
    logits: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, dtype: float16, bfloat16 or float32.
    """ + _COMMON_DOC + """
    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``).
    """
    return _sample_probs(logits, indices, generator, seed, offset, check_nan, False, is_logits=True, name="logits")


def top_k_sampling_from_probs(probs: torch.Tensor, top_k: Union[torch.Tensor, int],
                              indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                              generator: Optional[torch.Generator] = None, check_nan: bool = False,
                              seed: Optional[Union[int, torch.Tensor]] = None,
                              offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """Top-k sampling: sample from ``probs`` restricted to ``{p >= k-th largest p}`` (ties at the
    k-th value are all kept), renormalized. ``top_k <= 0`` or ``>= vocab_size`` keeps every token.

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
    top_k: Union[torch.Tensor, int]
        An int, or shape ``[batch_size]`` int32/int64 (one per output row).
    """ + _COMMON_DOC + """
    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``); with ``return_valid``
        also ``valid`` (bool, ``[batch_size]``).
    """
    return _sample_probs(probs, indices, generator, seed, offset, check_nan, return_valid, k=top_k)


def top_p_sampling_from_probs(probs: torch.Tensor, top_p: Union[torch.Tensor, float],
                              indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                              generator: Optional[torch.Generator] = None, check_nan: bool = False,
                              seed: Optional[Union[int, torch.Tensor]] = None,
                              offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """Top-p (nucleus) sampling: the kept set is ``{p >= v}`` for the largest ``v`` with
    ``sum(probs[probs >= v]) >= top_p``: the smallest top set whose mass reaches ``top_p``.
    ``top_p >= 1`` keeps every token.

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
    top_p: Union[torch.Tensor, float]
        A float, or shape ``[batch_size]`` float (one per output row).
    """ + _COMMON_DOC + """
    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``); with ``return_valid``
        also ``valid`` (bool, ``[batch_size]``).
    """
    return _sample_probs(probs, indices, generator, seed, offset, check_nan, return_valid, p=top_p)


def min_p_sampling_from_probs(probs: torch.Tensor, min_p: Union[torch.Tensor, float],
                              indices: Optional[torch.Tensor] = None, deterministic: bool = True,
                              generator: Optional[torch.Generator] = None, check_nan: bool = False,
                              seed: Optional[Union[int, torch.Tensor]] = None,
                              offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """Min-p sampling: the kept set is ``{p >= min_p * max(p)}``.

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
    min_p: Union[torch.Tensor, float]
        A float, or shape ``[batch_size]`` float (one per output row).
    """ + _COMMON_DOC + """
    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``); with ``return_valid``
        also ``valid`` (bool, ``[batch_size]``).
    """
    return _sample_probs(probs, indices, generator, seed, offset, check_nan, return_valid, min_p=min_p)


def top_k_top_p_sampling_from_probs(probs: torch.Tensor, top_k: Union[torch.Tensor, int],
                                    top_p: Union[torch.Tensor, float], indices: Optional[torch.Tensor] = None,
                                    filter_apply_order: str = "top_k_first", deterministic: bool = True,
                                    generator: Optional[torch.Generator] = None, check_nan: bool = False,
                                    seed: Optional[Union[int, torch.Tensor]] = None,
                                    offset: Optional[Union[int, torch.Tensor]] = None, return_valid: bool = False):
    """Top-k and top-p sampling in one kernel.

    ``filter_apply_order="top_k_first"``: top-k renormalization, then top-p on the renormalized
    top-k set (``top_p`` is relative to the top-k mass). ``"joint"``: the intersection of the
    top-k set and the top-p set of the original probabilities.

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
    top_k: Union[torch.Tensor, int]
        An int, or shape ``[batch_size]`` int32/int64.
    top_p: Union[torch.Tensor, float]
        A float, or shape ``[batch_size]`` float.
    filter_apply_order: str
        ``"top_k_first"`` (default) or ``"joint"``.
    """ + _COMMON_DOC + """
    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``); with ``return_valid``
        also ``valid`` (bool, ``[batch_size]``).
    """
    joint = _check_order(filter_apply_order)
    return _sample_probs(probs, indices, generator, seed, offset, check_nan, return_valid, k=top_k, p=top_p,
                         joint=joint)


def top_k_top_p_sampling_from_logits(logits: torch.Tensor, top_k: Union[torch.Tensor, int],
                                     top_p: Union[torch.Tensor, float], indices: Optional[torch.Tensor] = None,
                                     filter_apply_order: str = "top_k_first", deterministic: bool = True,
                                     generator: Optional[torch.Generator] = None, check_nan: bool = False,
                                     seed: Optional[Union[int, torch.Tensor]] = None,
                                     offset: Optional[Union[int, torch.Tensor]] = None) -> torch.Tensor:
    """Top-k and top-p sampling from logits, fused with the softmax (no probabilities written).

    ``"top_k_first"``: equivalent to ``top_k_mask_logits`` -> softmax -> ``top_p_sampling_from_probs``;
    ``"joint"``: softmax -> the joint top-k/top-p filter of ``top_k_top_p_sampling_from_probs``.

    Parameters
    ----------
    logits: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, dtype: float16, bfloat16 or float32.
    top_k: Union[torch.Tensor, int]
        An int, or shape ``[batch_size]`` int32/int64.
    top_p: Union[torch.Tensor, float]
        A float, or shape ``[batch_size]`` float.
    filter_apply_order: str
        ``"top_k_first"`` (default) or ``"joint"``.
    """ + _COMMON_DOC + """
    Returns
    -------
    samples: torch.Tensor
        shape: ``[batch_size]``, dtype: int32 (or the dtype of ``indices``).
    """
    joint = _check_order(filter_apply_order)
    return _sample_probs(logits, indices, generator, seed, offset, check_nan, False, k=top_k, p=top_p, joint=joint,
                         is_logits=True, name="logits")


def top_k_renorm_probs(probs: torch.Tensor, top_k: Union[torch.Tensor, int],
                       is_deterministic: bool = False) -> torch.Tensor:
    """Keep ``{p >= k-th largest p}`` (ties kept), zero the rest, divide by the kept sum.
    ``top_k <= 0`` or ``>= vocab_size`` keeps every entry (still renormalized).

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype: float32, float16 or bfloat16.
    top_k: Union[torch.Tensor, int]
        An int, or shape ``[batch_size]`` int32/int64.
    is_deterministic: bool
        Accepted for compatibility (FlashInfer 0.6.18 dropped it); always deterministic.

    Returns
    -------
    renorm_probs: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype of ``probs``.
    """
    probs = _check_matrix("probs", probs)
    k_arr, k_val, mode_k = _scalar_or_rows("top_k", top_k, probs.shape[0], probs.device, True)
    return _filter(probs, k_arr, k_val, None, 1.0, mode_k, 0, K.OP_RENORM)


def top_p_renorm_probs(probs: torch.Tensor, top_p: Union[torch.Tensor, float],
                       is_deterministic: bool = False) -> torch.Tensor:
    """Keep ``{p >= v}`` for the largest ``v`` with ``sum(probs[probs >= v]) >= top_p``, zero the
    rest, divide by the kept sum. ``top_p >= 1`` keeps every entry.

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
    top_p: Union[torch.Tensor, float]
        A float, or shape ``[batch_size]`` float.
    is_deterministic: bool
        Accepted for compatibility; always deterministic.

    Returns
    -------
    renorm_probs: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype: float32.
    """
    probs = _as_probs(probs)
    p_arr, p_val, mode_p = _scalar_or_rows("top_p", top_p, probs.shape[0], probs.device, False)
    return _filter(probs, None, 0, p_arr, p_val, 0, mode_p, K.OP_RENORM)


top_k_renorm_prob = top_k_renorm_probs
top_p_renorm_prob = top_p_renorm_probs


def top_k_mask_logits(logits: torch.Tensor, top_k: Union[torch.Tensor, int]) -> torch.Tensor:
    """Keep the logits ``>= k-th largest logit`` (ties kept), set the rest to ``-inf``.
    ``top_k <= 0`` or ``>= vocab_size`` returns a copy.

    Parameters
    ----------
    logits: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype: float32, float16 or bfloat16.
    top_k: Union[torch.Tensor, int]
        An int, or shape ``[batch_size]`` int32/int64.

    Returns
    -------
    masked_logits: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype of ``logits``.
    """
    logits = _check_matrix("logits", logits)
    k_arr, k_val, mode_k = _scalar_or_rows("top_k", top_k, logits.shape[0], logits.device, True)
    return _filter(logits, k_arr, k_val, None, 1.0, mode_k, 0, K.OP_MASK)


def chain_speculative_sampling(draft_probs, draft_token_ids, target_probs,
                               maybe_output_accepted_token_num: Optional[torch.Tensor] = None,
                               maybe_output_emitted_draft_token_num: Optional[torch.Tensor] = None,
                               deterministic: bool = True, generator: Optional[torch.Generator] = None,
                               seed: Optional[Union[int, torch.Tensor]] = None,
                               offset: Optional[Union[int, torch.Tensor]] = None,
                               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Speculative sampling over a chain of draft tokens (Chen et al., 2023).

    Draft token ``i`` is accepted while ``u_i * draft[i, t_i] < target[i, t_i]``; at the first
    rejection ``pos`` a token is drawn from ``relu(target[pos] - draft[pos])`` (renormalized), or,
    if all were accepted, a bonus token from ``target[num_speculate_tokens]``.

    Parameters
    ----------
    draft_probs: torch.Tensor
        shape: ``[batch_size, num_speculate_tokens, vocab_size]``, float32 (others converted).
    draft_token_ids: torch.Tensor
        shape: ``[batch_size, num_speculate_tokens]``, int32 or int64.
    target_probs: torch.Tensor
        shape: ``[batch_size, num_speculate_tokens + 1, vocab_size]``, float32 (others converted).
    maybe_output_accepted_token_num, maybe_output_emitted_draft_token_num: Optional[torch.Tensor]
        shape: ``[batch_size]``, int32; the counts are added in place. Default: new zeros.
    deterministic, generator, seed, offset:
        As in ``sampling_from_probs`` (``num_speculate_tokens + 1`` uniforms per row).

    Returns
    -------
    output_token_ids: torch.Tensor
        shape: ``[batch_size, num_speculate_tokens + 1]``, int32; accepted draft tokens, then the
        sampled token, then ``-1``.
    output_accepted_token_num: torch.Tensor
        shape: ``[batch_size]``, int32: draft tokens passing the test independently of each other.
    output_emitted_draft_token_num: torch.Tensor
        shape: ``[batch_size]``, int32: draft tokens emitted (without the bonus/resampled token).
    """
    check_tensor("draft_probs", draft_probs, dtypes=_FLOATS, ndim=3)
    _check_device("draft_probs", draft_probs)
    b, n_spec, vocab = draft_probs.shape
    check_tensor("draft_token_ids", draft_token_ids, dtypes=(torch.int32, torch.int64), ndim=2,
                 device=draft_probs.device)
    check_tensor("target_probs", target_probs, dtypes=_FLOATS, ndim=3, device=draft_probs.device)
    if tuple(draft_token_ids.shape) != (b, n_spec):
        raise ValueError(f"draft_token_ids: expected shape [{b}, {n_spec}], got {list(draft_token_ids.shape)}")
    if tuple(target_probs.shape) != (b, n_spec + 1, vocab):
        raise ValueError(f"target_probs: expected shape [{b}, {n_spec + 1}, {vocab}], got {list(target_probs.shape)}")
    outs = []
    for name, t in (("maybe_output_accepted_token_num", maybe_output_accepted_token_num),
                    ("maybe_output_emitted_draft_token_num", maybe_output_emitted_draft_token_num)):
        if t is None:
            t = torch.zeros(b, dtype=torch.int32, device=draft_probs.device)
        else:
            check_tensor(name, t, dtypes=(torch.int32,), ndim=1, device=draft_probs.device)
            if t.shape[0] != b or not t.is_contiguous():
                raise ValueError(f"{name}: expected a contiguous tensor of shape [{b}], got {list(t.shape)}")
        outs.append(t)
    acc, emit = outs
    if _checks.ENABLED:
        _checks.check_in_range("draft_token_ids", draft_token_ids, 0, vocab, "a token id of the vocabulary")
    draft_probs = draft_probs.float().contiguous()
    target_probs = target_probs.float().contiguous()
    draft_token_ids = draft_token_ids.to(torch.int32).contiguous()
    rng = _rng(b, n_spec + 1, draft_probs.device, generator, seed, offset)
    out = (_chain_op if _compiling() else _launch_chain)(draft_probs, draft_token_ids, target_probs, acc, emit, *rng)
    return out, acc, emit


class TopKTieBreak(IntEnum):
    """Which of the elements tied at the k-th value ``top_k`` returns: NONE (0, here the same as
    SMALL), SMALL (1, smaller indices first) or LARGE (2, larger indices first)."""

    NONE = 0
    SMALL = 1
    LARGE = 2


def top_k(input: torch.Tensor, k: int, sorted: bool = False, deterministic: bool = False,
          tie_break: int = TopKTieBreak.NONE, dsa_graph_safe: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest entries of each row and their indices (FlashInfer's ``top_k``).

    Exactly ``k`` entries a row: every entry above the k-th largest value, then as many entries
    equal to it as needed, chosen by ``tie_break``. Unsorted output lists the entries above the
    k-th value in index order, then the ties in index order (``k = d``: every entry in order).

    Parameters
    ----------
    input: torch.Tensor
        shape: ``[batch_size, d]``, dtype: float32, float16 or bfloat16.
    k: int
        ``1 <= k <= d``.
    sorted: bool
        Return each row's entries in descending order of value (a stable ``torch.sort`` of the
        ``k`` selected entries, as FlashInfer does for large ``k``).
    deterministic: bool
        Accepted; the output (values, indices and order) is always deterministic.
    tie_break: int
        ``TopKTieBreak``: NONE or SMALL keep the tied entries with the smallest indices, LARGE
        those with the largest.
    dsa_graph_safe: bool
        Accepted; every path here is CUDA-graph safe.

    Returns
    -------
    values: torch.Tensor
        shape: ``[batch_size, k]``, dtype of ``input``.
    indices: torch.Tensor
        shape: ``[batch_size, k]``, dtype: int64.
    """
    x = _check_matrix("input", input)
    if isinstance(k, bool) or not isinstance(k, Integral):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if not 1 <= int(k) <= x.shape[1]:
        raise ValueError(f"k: expected 1 <= k <= {x.shape[1]} (the row length), got {k}")
    if int(tie_break) not in (0, 1, 2):
        raise ValueError(f"tie_break: expected TopKTieBreak.NONE, SMALL or LARGE (0, 1, 2), got {tie_break!r}")
    values, indices = (_top_k_op if _compiling() else _launch_top_k)(x, int(k), int(tie_break) == TopKTieBreak.LARGE)
    if sorted:
        values, order = torch.sort(values, dim=-1, descending=True, stable=True)
        indices = torch.gather(indices, -1, order)
    return values, indices
