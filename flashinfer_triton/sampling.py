"""FlashInfer's sampling API (``flashinfer.sampling``) on Triton kernels.

Every operator works on one row per program and streams the vocabulary (up to 256k and more) in
blocks; there is no sort anywhere. The samplers are rejection samplers with two pivots (FlashInfer's
scheme): inverse-CDF draws from a shrinking candidate set, each checked for membership of the
top-k / top-p / min-p set with one counting pass (see ``kernels/sampling.py``). The renorm and mask
filters find exact thresholds (order statistics) by a multi-pivot bisection on the value. The kept
set of every filter is ``{x >= threshold}``: ties at the threshold are all kept, as in FlashInfer.

Randomness: two uniforms per output row (the first draw, and the seed of later rounds' Philox
draws) come from ``torch.rand(..., generator=generator)`` on the device
(no host sync), so the same generator state gives the same samples. With explicit ``seed`` and
``offset`` (ints or int64 tensors of length 1 or batch_size, the CUDA-graph friendly form), they
come from a Philox kernel instead. The exact random streams differ from FlashInfer's, the
distributions do not. All kernels are deterministic (no atomics), whatever ``deterministic`` says.

Under ``torch.compile`` every hot path goes through a ``torch.library`` custom op (registered
below, with a fake implementation); eager calls go straight to the launchers.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Optional, Tuple, Union

import torch

from ._utils import check_tensor, interpreter_active
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


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _launch_sample(x, uniforms, indices, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, k_mode, p_mode, m_mode,
                   joint, is_logits):
    dev = x.device
    batch = indices.shape[0] if indices is not None else x.shape[0]
    out_dtype = indices.dtype if indices is not None else torch.int32
    samples = torch.empty(batch, dtype=out_dtype, device=dev)
    valid = torch.empty(batch, dtype=torch.bool, device=dev)
    if batch == 0:
        return samples, valid
    block, sblock, piv, warps = K.sampling_config(x.shape[1], _IS_HIP)
    K.sample_kernel[(batch,)](
        x, indices if indices is not None else _dummy(dev, torch.int32),
        k_arr if k_arr is not None else _dummy(dev, torch.int32),
        p_arr if p_arr is not None else _dummy(dev, torch.float32),
        mp_arr if mp_arr is not None else _dummy(dev, torch.float32),
        uniforms, samples, valid,
        x.stride(0), x.shape[1], int(k_val), float(p_val), float(mp_val), k_mode, p_mode, m_mode, int(joint),
        HAS_INDICES=indices is not None, IS_LOGITS=is_logits, BLOCK=block, SEARCH_BLOCK=sblock, PIVOTS=piv,
        num_warps=warps,
    )
    return samples, valid


@torch.library.custom_op("flashinfer_triton::sampling_sample", mutates_args=())
def _sample_op(x: torch.Tensor, uniforms: torch.Tensor, indices: Optional[torch.Tensor],
               k_arr: Optional[torch.Tensor], k_val: int, p_arr: Optional[torch.Tensor], p_val: float,
               mp_arr: Optional[torch.Tensor], mp_val: float, k_mode: int, p_mode: int, m_mode: int, joint: bool,
               is_logits: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    return _launch_sample(x, uniforms, indices, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, k_mode, p_mode,
                          m_mode, joint, is_logits)


@_sample_op.register_fake
def _(x, uniforms, indices, k_arr, k_val, p_arr, p_val, mp_arr, mp_val, k_mode, p_mode, m_mode, joint, is_logits):
    batch = indices.shape[0] if indices is not None else x.shape[0]
    out_dtype = indices.dtype if indices is not None else torch.int32
    return x.new_empty(batch, dtype=out_dtype), x.new_empty(batch, dtype=torch.bool)


def _launch_filter(x, k_arr, k_val, p_arr, p_val, k_mode, p_mode, mode):
    dev = x.device
    out = torch.empty_like(x)
    if x.shape[0] == 0:
        return out
    block, sblock, piv, warps = K.sampling_config(x.shape[1], _IS_HIP)
    K.filter_kernel[(x.shape[0],)](
        x, out, k_arr if k_arr is not None else _dummy(dev, torch.int32),
        p_arr if p_arr is not None else _dummy(dev, torch.float32),
        x.stride(0), out.stride(0), x.shape[1], int(k_val), float(p_val), k_mode, p_mode,
        MODE=mode, BLOCK=block, SEARCH_BLOCK=sblock, PIVOTS=piv, num_warps=warps,
    )
    return out


@torch.library.custom_op("flashinfer_triton::sampling_filter", mutates_args=())
def _filter_op(x: torch.Tensor, k_arr: Optional[torch.Tensor], k_val: int, p_arr: Optional[torch.Tensor],
               p_val: float, k_mode: int, p_mode: int, mode: int) -> torch.Tensor:
    return _launch_filter(x, k_arr, k_val, p_arr, p_val, k_mode, p_mode, mode)


@_filter_op.register_fake
def _(x, k_arr, k_val, p_arr, p_val, k_mode, p_mode, mode):
    return torch.empty_like(x)


def _launch_softmax(logits, t_arr, t_val, t_mode):
    out = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    if logits.shape[0] == 0:
        return out
    block, _, _, warps = K.sampling_config(logits.shape[1], _IS_HIP)
    K.softmax_kernel[(logits.shape[0],)](
        logits, out, t_arr if t_arr is not None else _dummy(logits.device, torch.float32),
        logits.stride(0), out.stride(0), logits.shape[1], float(t_val), t_mode, BLOCK=block, num_warps=warps,
    )
    return out


@torch.library.custom_op("flashinfer_triton::sampling_softmax", mutates_args=())
def _softmax_op(logits: torch.Tensor, t_arr: Optional[torch.Tensor], t_val: float, t_mode: int) -> torch.Tensor:
    return _launch_softmax(logits, t_arr, t_val, t_mode)


@_softmax_op.register_fake
def _(logits, t_arr, t_val, t_mode):
    return torch.empty(logits.shape, dtype=torch.float32, device=logits.device)


def _launch_chain(draft_probs, draft_ids, target_probs, uniforms, acc, emit):
    b, n_spec, vocab = draft_probs.shape
    out = torch.empty((b, n_spec + 1), dtype=torch.int32, device=draft_probs.device)
    if b == 0:
        return out
    block, _, _, warps = K.sampling_config(vocab, _IS_HIP)
    K.chain_speculative_kernel[(b,)](draft_probs, draft_ids, target_probs, uniforms, out, acc, emit, n_spec, vocab,
                                     BLOCK=block, num_warps=warps)
    return out


@torch.library.custom_op("flashinfer_triton::chain_speculative_sampling", mutates_args=("acc", "emit"))
def _chain_op(draft_probs: torch.Tensor, draft_ids: torch.Tensor, target_probs: torch.Tensor,
              uniforms: torch.Tensor, acc: torch.Tensor, emit: torch.Tensor) -> torch.Tensor:
    return _launch_chain(draft_probs, draft_ids, target_probs, uniforms, acc, emit)


@_chain_op.register_fake
def _(draft_probs, draft_ids, target_probs, uniforms, acc, emit):
    b, n_spec, _ = draft_probs.shape
    return draft_probs.new_empty((b, n_spec + 1), dtype=torch.int32)


def _launch_philox(seed_arr, seed_val, off_arr, off_val, batch, per_row, device):
    u = torch.empty((batch, per_row), dtype=torch.float32, device=device)
    if batch == 0:
        return u
    dummy = _dummy(device, torch.int64)
    K.philox_uniform_kernel[(batch,)](
        seed_arr if seed_arr is not None else dummy, off_arr if off_arr is not None else dummy, u,
        int(seed_val), int(off_val),
        0 if seed_arr is None or seed_arr.shape[0] == 1 else 1, 0 if off_arr is None or off_arr.shape[0] == 1 else 1,
        per_row, SEED_ARR=seed_arr is not None, OFF_ARR=off_arr is not None, BLOCK_R=K.philox_block(per_row),
        num_warps=1,
    )
    return u


@torch.library.custom_op("flashinfer_triton::sampling_philox_uniforms", mutates_args=())
def _philox_op(seed_arr: Optional[torch.Tensor], seed_val: int, off_arr: Optional[torch.Tensor], off_val: int,
               batch: int, per_row: int, device: torch.device) -> torch.Tensor:
    return _launch_philox(seed_arr, seed_val, off_arr, off_val, batch, per_row, device)


@_philox_op.register_fake
def _(seed_arr, seed_val, off_arr, off_val, batch, per_row, device):
    return torch.empty((batch, per_row), dtype=torch.float32, device=device)


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
    if t.shape[1] >= 2**31 - 1:
        raise ValueError(f"{name}: vocabulary size {t.shape[1]} does not fit in int32")
    if t.stride(1) != 1:
        t = t.contiguous()
    return t


def _check_indices(indices, x: torch.Tensor) -> Optional[torch.Tensor]:
    if indices is None:
        return None
    check_tensor("indices", indices, dtypes=(torch.int32, torch.int64), ndim=1, device=x.device)
    return indices if indices.is_contiguous() else indices.contiguous()


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
    return None, float(v), 1


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")


def _seed_offset_part(name, v, batch, device):
    if isinstance(v, torch.Tensor):
        check_tensor(name, v, dtypes=(torch.int64,) + ((torch.uint64,) if hasattr(torch, "uint64") else ()),
                     ndim=1, device=device)
        if v.shape[0] not in (1, batch):
            raise ValueError(f"{name}: expected 1 or {batch} entries, got {v.shape[0]}")
        return v.view(torch.int64).contiguous(), 0
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise TypeError(f"{name}: expected an int or an int64 tensor, got {type(v).__name__}")
    return None, int(v)


def _uniforms(batch: int, per_row: int, device, generator, seed, offset) -> torch.Tensor:
    """[batch, per_row] float32 uniforms in [0, 1) on the device: torch.rand from ``generator``,
    or Philox(seed, offset) when both are given."""
    _check_generator(generator)
    if seed is None and offset is None:
        return torch.rand((batch, per_row), device=device, generator=generator, dtype=torch.float32)
    if seed is None or offset is None:
        raise ValueError("seed and offset: give both or neither")
    if isinstance(seed, torch.Tensor) != isinstance(offset, torch.Tensor):
        raise ValueError("seed and offset: must both be tensors or both be ints")
    s_arr, s_val = _seed_offset_part("seed", seed, batch, device)
    o_arr, o_val = _seed_offset_part("offset", offset, batch, device)
    return (_philox_op if _compiling() else _launch_philox)(s_arr, s_val, o_arr, o_val, batch, per_row,
                                                            torch.device(device))


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
    indices = _check_indices(indices, x)
    _check_nan(name, x, check_nan)
    batch = indices.shape[0] if indices is not None else x.shape[0]
    k_arr, k_val, k_mode = (None, 0, 0) if k is None else _scalar_or_rows("top_k", k, batch, x.device, True)
    p_arr, p_val, p_mode = (None, 1.0, 0) if p is None else _scalar_or_rows("top_p", p, batch, x.device, False)
    m_arr, m_val, m_mode = (None, 0.0, 0) if min_p is None else _scalar_or_rows("min_p", min_p, batch, x.device,
                                                                               False)
    u = _uniforms(batch, 2, x.device, generator, seed, offset)  # round 0's uniform, later rounds' seed
    samples, valid = _sample(x, u, indices, k_arr, k_val, p_arr, p_val, m_arr, m_val, k_mode, p_mode, m_mode,
                             joint, is_logits)
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
        Generator on the device of the input for the two uniforms per output row.
    check_nan: bool
        Raise ``ValueError`` if the input holds a NaN (a host sync). Default ``False``.
    seed, offset: Optional[int or torch.Tensor]
        Both or neither. Ints, or int64 tensors of shape ``[1]`` or ``[batch_size]`` (CUDA-graph
        safe): the uniforms then come from Philox(seed, offset + 2 * row + j) instead of ``generator``.
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
    """Categorical sampling from probabilities (inverse CDF, one uniform per output row).

    Parameters
    ----------
    probs: torch.Tensor
        shape: ``[unique_batch_size, vocab_size]``, float32 (float16/bfloat16 are converted).
        Rows need not sum to 1; zero entries are never sampled.
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
        Accepted for compatibility; always deterministic.

    Returns
    -------
    renorm_probs: torch.Tensor
        shape: ``[batch_size, vocab_size]``, dtype of ``probs``.
    """
    probs = _check_matrix("probs", probs)
    k_arr, k_val, k_mode = _scalar_or_rows("top_k", top_k, probs.shape[0], probs.device, True)
    return _filter(probs, k_arr, k_val, None, 1.0, k_mode, 0, K.MODE_TOP_K_RENORM)


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
    p_arr, p_val, p_mode = _scalar_or_rows("top_p", top_p, probs.shape[0], probs.device, False)
    return _filter(probs, None, 0, p_arr, p_val, 0, p_mode, K.MODE_TOP_P_RENORM)


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
    k_arr, k_val, k_mode = _scalar_or_rows("top_k", top_k, logits.shape[0], logits.device, True)
    return _filter(logits, k_arr, k_val, None, 1.0, k_mode, 0, K.MODE_TOP_K_MASK)


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
    draft_probs = draft_probs.float().contiguous()
    target_probs = target_probs.float().contiguous()
    draft_token_ids = draft_token_ids.to(torch.int32).contiguous()
    u = _uniforms(b, n_spec + 1, draft_probs.device, generator, seed, offset)
    out = (_chain_op if _compiling() else _launch_chain)(draft_probs, draft_token_ids, target_probs, u, acc, emit)
    return out, acc, emit
