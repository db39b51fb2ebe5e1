"""Paged KV-cache utilities, FlashInfer 0.6.x API: ``append_paged_kv_cache``,
``append_paged_mla_kv_cache``, ``get_batch_indices_positions``, ``get_seq_lens``.

Paged KV cache: a 5-D tensor ``[num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) or
``[num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a ``(k_cache, v_cache)`` tuple of
4-D tensors ``[num_pages, page_size, num_kv_heads, head_dim]`` (NHD) /
``[num_pages, num_kv_heads, page_size, head_dim]`` (HND). An MLA cache is a pair of 3-D tensors
``ckv_cache [num_pages, page_size, 512]``, ``kpe_cache [num_pages, page_size, 64]``. Page table in
CSR form, all int32.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import triton

from . import _checks
from ._checks import INT32_64, index_tensor
from ._utils import check_tensor, interpreter_active
from .kernels import page as _k

__all__ = ["append_paged_kv_cache", "append_paged_mla_kv_cache", "get_batch_indices_positions", "get_seq_lens"]

_KV_LAYOUTS = ("NHD", "HND")
_CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)
# A same-dtype append is a bitwise copy through an integer view of the same width.
_COPY_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32}
# Appends that convert in the kernel: (append dtype, cache dtype).
_CAST_PAIRS = {(torch.float16, torch.float8_e4m3fn), (torch.bfloat16, torch.float8_e4m3fn)}


def _check_device(name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")


def _check_kernel_device(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreter_active():
        raise ValueError(f"{name}: expected a CUDA/ROCm tensor, got one on cpu (set TRITON_INTERPRET=1 for the CPU interpreter)")


def _check_kv_layout(kv_layout: str) -> None:
    if kv_layout not in _KV_LAYOUTS:
        raise ValueError(f"kv_layout: expected one of {list(_KV_LAYOUTS)}, got {kv_layout!r}")


def _unpack_paged_kv_cache(paged_kv_cache, kv_layout: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(k_cache, v_cache) 4-D views, each in the given layout."""
    if isinstance(paged_kv_cache, torch.Tensor):
        check_tensor("paged_kv_cache", paged_kv_cache, ndim=5)
        if paged_kv_cache.shape[1] != 2:
            raise ValueError(
                f"paged_kv_cache: a 5-D cache must have shape [num_pages, 2, ...] (dim 1 = key/value), "
                f"got {list(paged_kv_cache.shape)}"
            )
        return paged_kv_cache[:, 0], paged_kv_cache[:, 1]
    if isinstance(paged_kv_cache, (tuple, list)) and len(paged_kv_cache) == 2:
        k_cache, v_cache = paged_kv_cache
        check_tensor("paged_kv_cache[0] (k_cache)", k_cache, ndim=4)
        check_tensor("paged_kv_cache[1] (v_cache)", v_cache, ndim=4)
        if k_cache.shape != v_cache.shape:
            raise ValueError(f"paged_kv_cache: k_cache shape {list(k_cache.shape)} != v_cache shape {list(v_cache.shape)}")
        if k_cache.dtype != v_cache.dtype:
            raise TypeError(f"paged_kv_cache: k_cache dtype {k_cache.dtype} != v_cache dtype {v_cache.dtype}")
        return k_cache, v_cache
    raise TypeError(
        f"paged_kv_cache: expected a 5-D tensor or a (k_cache, v_cache) tuple of 4-D tensors, got {type(paged_kv_cache).__name__}"
    )


def _launch_append(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                   kv_indices, kv_indptr, kv_layout: str) -> None:
    """Launch the append kernel; all checks are done. ``k_cache``/``v_cache`` are 4-D views."""
    nnz, num_heads, head_dim = append_key.shape
    if nnz == 0:
        return
    if append_key.dtype == k_cache.dtype:
        view = _COPY_VIEW[k_cache.element_size()]
        append_key, append_value = append_key.view(view), append_value.view(view)
        k_cache, v_cache = k_cache.view(view), v_cache.view(view)
    if kv_layout == "NHD":
        page_size = k_cache.shape[1]
        s_kc = (k_cache.stride(0), k_cache.stride(1), k_cache.stride(2))
        s_vc = (v_cache.stride(0), v_cache.stride(1), v_cache.stride(2))
    else:
        page_size = k_cache.shape[2]
        s_kc = (k_cache.stride(0), k_cache.stride(2), k_cache.stride(1))
        s_vc = (v_cache.stride(0), v_cache.stride(2), v_cache.stride(1))
    block_h, block_d = _k.append_blocks(head_dim)
    grid = (nnz, triton.cdiv(num_heads, block_h))
    _k.append_paged_kv_cache_kernel[grid](
        append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr,
        page_size, num_heads, head_dim, kv_indptr.numel() - 1, kv_indices.numel(), k_cache.shape[0],
        append_key.stride(0), append_key.stride(1), append_value.stride(0), append_value.stride(1),
        *s_kc, *s_vc,
        BLOCK_H=block_h, BLOCK_D=block_d, num_warps=_k.APPEND_NUM_WARPS,
    )


@torch.library.custom_op("flashinfer_triton::append_paged_kv_cache", mutates_args=("k_cache", "v_cache"))
def _append_paged_kv_cache_op(
    append_key: torch.Tensor,
    append_value: torch.Tensor,
    batch_indices: torch.Tensor,
    positions: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_layout: str,
) -> None:
    _launch_append(append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr, kv_layout)


@_append_paged_kv_cache_op.register_fake
def _(append_key, append_value, batch_indices, positions, k_cache, v_cache, kv_indices, kv_indptr, kv_layout):
    return None


def append_paged_kv_cache(
    append_key: torch.Tensor,
    append_value: torch.Tensor,
    batch_indices: torch.Tensor,
    positions: torch.Tensor,
    paged_kv_cache: Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]],
    kv_indices: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_last_page_len: torch.Tensor,
    kv_layout: str = "NHD",
) -> None:
    r"""Append a batch of key-value rows to a paged KV cache, in place.

    Row ``i`` goes to slot ``positions[i] % page_size`` of page
    ``kv_indices[kv_indptr[batch_indices[i]] + positions[i] // page_size]``; no other slot is
    written.

    Parameters
    ----------
    append_key : torch.Tensor
        Keys to append, ragged: shape ``[nnz, num_kv_heads, head_dim]``; the cache's dtype, or
        float16/bfloat16 when the cache is float8_e4m3fn (converted, round to nearest even).
    append_value : torch.Tensor
        Values to append, same shape and dtype as ``append_key``.
    batch_indices : torch.Tensor
        Request of each row, shape ``[nnz]``, dtype ``torch.int32``.
    positions : torch.Tensor
        Position of each row in its request's KV sequence (after the append), shape ``[nnz]``,
        dtype ``torch.int32``. See :func:`get_batch_indices_positions`.
    paged_kv_cache : Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]
        A 5-D tensor ``[max_num_pages, 2, page_size, num_kv_heads, head_dim]`` (NHD) or
        ``[max_num_pages, 2, num_kv_heads, page_size, head_dim]`` (HND), or a tuple
        ``(k_cache, v_cache)`` of 4-D tensors ``[max_num_pages, page_size, num_kv_heads, head_dim]``
        (NHD) / ``[max_num_pages, num_kv_heads, page_size, head_dim]`` (HND). dtype float16,
        bfloat16, float32, float8_e4m3fn or float8_e5m2; the last dimension contiguous.
    kv_indices : torch.Tensor
        Page ids, shape ``[kv_indptr[-1]]``, dtype ``torch.int32``.
    kv_indptr : torch.Tensor
        Page-table indptr, shape ``[batch_size + 1]``, dtype ``torch.int32``.
    kv_last_page_len : torch.Tensor
        Entries in the last page of each request, shape ``[batch_size]``, dtype ``torch.int32``
        (checked, not read by the kernel: positions already say where each row goes).
    kv_layout : str
        ``"NHD"`` (default) or ``"HND"``.

    Note
    ----
    The page table must already include the appended rows (space allocated beforehand). The
    index tensors must be contiguous (a strided view raises, as in FlashInfer).

    Bad values: FlashInfer does not check them, and a row with an out-of-range
    ``batch_indices``/``positions``/page id writes into another request's pages or outside the
    cache. Here such a row is dropped instead (the kernel writes only a slot inside its own
    request's pages and the cache), and in checked mode (``flashinfer_triton.checked()``,
    ``FLASHINFER_TRITON_CHECKED=1``) the call raises ``ValueError`` naming the argument and the
    first bad element: ``batch_indices`` in ``[0, batch_size)``, ``positions`` below each
    request's length, a well-formed ``kv_indptr``, ``kv_last_page_len`` in ``[1, page_size]``,
    page ids in ``[0, max_num_pages)``.
    """
    _check_kv_layout(kv_layout)
    k_cache, v_cache = _unpack_paged_kv_cache(paged_kv_cache, kv_layout)
    check_tensor("append_key", append_key, ndim=3)
    device = append_key.device
    _check_kernel_device("append_key", append_key)
    check_tensor("append_value", append_value, ndim=3, device=device)
    if append_value.shape != append_key.shape:
        raise ValueError(f"append_value: expected shape {list(append_key.shape)} (append_key's), got {list(append_value.shape)}")
    if append_value.dtype != append_key.dtype:
        raise TypeError(f"append_value: expected dtype {append_key.dtype} (append_key's), got {append_value.dtype}")
    nnz, num_heads, head_dim = append_key.shape
    cache_dtype = k_cache.dtype
    if cache_dtype not in _CACHE_DTYPES:
        raise TypeError(f"paged_kv_cache: unsupported dtype {cache_dtype}; expected one of {list(_CACHE_DTYPES)}")
    for name, t in (("append_key", append_key), ("append_value", append_value)):
        if t.dtype != cache_dtype and (t.dtype, cache_dtype) not in _CAST_PAIRS:
            raise TypeError(
                f"{name}: dtype {t.dtype} cannot be appended to a {cache_dtype} cache; expected {cache_dtype}"
                + (" or float16/bfloat16" if cache_dtype == torch.float8_e4m3fn else "")
            )
        if t.stride(-1) != 1 and head_dim > 1:
            raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {t.stride()}")
    cache_names = ("paged_kv_cache", "paged_kv_cache") if isinstance(paged_kv_cache, torch.Tensor) else ("k_cache", "v_cache")
    for name, c in zip(cache_names, (k_cache, v_cache)):
        _check_device(name, c, device)
        if c.stride(-1) != 1 and head_dim > 1:
            raise ValueError(f"{name}: the last dimension must be contiguous (stride 1), got strides {tuple(c.stride())}")
    if kv_layout == "NHD":
        page_size, cache_heads = k_cache.shape[1], k_cache.shape[2]
    else:
        cache_heads, page_size = k_cache.shape[1], k_cache.shape[2]
    if cache_heads != num_heads or k_cache.shape[3] != head_dim:
        raise ValueError(
            f"paged_kv_cache: {kv_layout} cache with num_kv_heads={cache_heads}, head_dim={k_cache.shape[3]} "
            f"does not match append_key's num_kv_heads={num_heads}, head_dim={head_dim} (wrong kv_layout?)"
        )
    if page_size < 1:
        raise ValueError("paged_kv_cache: page_size must be at least 1")
    if _k.append_blocks(head_dim) is None:
        raise NotImplementedError(f"head_dim={head_dim}: at most {_k.APPEND_BLOCK_DS[-1]} is supported")
    # Hot path (once per layer per step): strided index views are rejected, never copied per call.
    batch_indices = index_tensor("batch_indices", batch_indices, numel=nnz, device=device)
    positions = index_tensor("positions", positions, numel=nnz, device=device)
    kv_indices = index_tensor("kv_indices", kv_indices, device=device)
    kv_indptr = index_tensor("kv_indptr", kv_indptr, min_numel=1, device=device)
    kv_last_page_len = index_tensor("kv_last_page_len", kv_last_page_len, numel=kv_indptr.numel() - 1, device=device)
    if _checks.ENABLED:
        _checks.check_paged_kv(kv_indptr, kv_indices, kv_last_page_len, page_size, k_cache.shape[0])
        _checks.check_positions("positions", positions, batch_indices, kv_indptr, kv_last_page_len, page_size)

    if torch.compiler.is_compiling():
        _append_paged_kv_cache_op(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                                  kv_indices, kv_indptr, kv_layout)
    else:
        _launch_append(append_key, append_value, batch_indices, positions, k_cache, v_cache,
                       kv_indices, kv_indptr, kv_layout)


def _launch_append_mla(append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache, kv_indices,
                       kv_indptr) -> None:
    """Launch the MLA append kernel; all checks are done."""
    nnz = append_ckv.shape[0]
    if nnz == 0:
        return
    if append_ckv.dtype == ckv_cache.dtype:
        view = _COPY_VIEW[ckv_cache.element_size()]
        append_ckv, append_kpe = append_ckv.view(view), append_kpe.view(view)
        ckv_cache, kpe_cache = ckv_cache.view(view), kpe_cache.view(view)
    _k.append_paged_mla_kv_cache_kernel[(nnz,)](
        append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache, kv_indices, kv_indptr,
        ckv_cache.shape[1], kv_indptr.numel() - 1, kv_indices.numel(), ckv_cache.shape[0],
        append_ckv.stride(0), append_kpe.stride(0), ckv_cache.stride(0), ckv_cache.stride(1),
        kpe_cache.stride(0), kpe_cache.stride(1),
        D_CKV=_k.MLA_D_CKV, D_KPE=_k.MLA_D_KPE, num_warps=_k.MLA_APPEND_NUM_WARPS,
    )


@torch.library.custom_op("flashinfer_triton::append_paged_mla_kv_cache", mutates_args=("ckv_cache", "kpe_cache"))
def _append_paged_mla_kv_cache_op(
    append_ckv: torch.Tensor,
    append_kpe: torch.Tensor,
    batch_indices: torch.Tensor,
    positions: torch.Tensor,
    ckv_cache: torch.Tensor,
    kpe_cache: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_indptr: torch.Tensor,
) -> None:
    _launch_append_mla(append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache, kv_indices, kv_indptr)


@_append_paged_mla_kv_cache_op.register_fake
def _(append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache, kv_indices, kv_indptr):
    return None


def append_paged_mla_kv_cache(
    append_ckv: torch.Tensor,
    append_kpe: torch.Tensor,
    batch_indices: torch.Tensor,
    positions: torch.Tensor,
    ckv_cache: torch.Tensor,
    kpe_cache: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_last_page_len: torch.Tensor,
) -> None:
    r"""Append a batch of MLA rows (compressed KV and its rotary part) to a paged MLA cache, in place.

    Row ``i`` goes to slot ``positions[i] % page_size`` of page
    ``kv_indices[kv_indptr[batch_indices[i]] + positions[i] // page_size]`` of both caches.

    Parameters
    ----------
    append_ckv : torch.Tensor
        Compressed KV rows, ragged: shape ``[nnz, 512]``; the cache's dtype, or float16/bfloat16
        when the cache is float8_e4m3fn (converted, round to nearest even). Last dim contiguous.
    append_kpe : torch.Tensor
        Rotary key rows, shape ``[nnz, 64]``, ``append_ckv``'s dtype.
    batch_indices : torch.Tensor
        Request of each row, shape ``[nnz]``, dtype ``torch.int32``.
    positions : torch.Tensor
        Position of each row in its request's KV sequence (after the append), shape ``[nnz]``,
        dtype ``torch.int32`` (see :func:`get_batch_indices_positions`).
    ckv_cache : torch.Tensor
        shape ``[max_num_pages, page_size, 512]`` (page and slot strides free, last dim contiguous),
        dtype float16, bfloat16, float32 or float8_e4m3fn.
    kpe_cache : torch.Tensor
        shape ``[max_num_pages, page_size, 64]``, ``ckv_cache``'s dtype.
    kv_indices : torch.Tensor
        Page ids, shape ``[kv_indptr[-1]]``, dtype ``torch.int32``.
    kv_indptr : torch.Tensor
        Page-table indptr, shape ``[batch_size + 1]``, dtype ``torch.int32``.
    kv_last_page_len : torch.Tensor
        Entries in the last page of each request, shape ``[batch_size]``, dtype ``torch.int32``
        (checked, not read by the kernel).

    Note
    ----
    The page table must already include the appended rows. As in ``append_paged_kv_cache``, a row
    with an out-of-range ``batch_indices``/``positions``/page id is dropped, and checked mode
    (``flashinfer_triton.checked()``) raises ``ValueError`` naming the first bad element.
    """
    check_tensor("append_ckv", append_ckv, ndim=2, last_dim_contiguous=True)
    device = append_ckv.device
    _check_kernel_device("append_ckv", append_ckv)
    check_tensor("append_kpe", append_kpe, dtypes=(append_ckv.dtype,), ndim=2, device=device, last_dim_contiguous=True)
    nnz = append_ckv.shape[0]
    if tuple(append_ckv.shape) != (nnz, _k.MLA_D_CKV) or tuple(append_kpe.shape) != (nnz, _k.MLA_D_KPE):
        raise NotImplementedError(f"append_ckv/append_kpe: shapes [nnz, {_k.MLA_D_CKV}] and [nnz, {_k.MLA_D_KPE}] "
                                  f"(DeepSeek's, as FlashInfer's) are supported, got {list(append_ckv.shape)} and "
                                  f"{list(append_kpe.shape)}")
    check_tensor("ckv_cache", ckv_cache, ndim=3, device=device, last_dim_contiguous=True)
    check_tensor("kpe_cache", kpe_cache, dtypes=(ckv_cache.dtype,), ndim=3, device=device, last_dim_contiguous=True)
    if ckv_cache.dtype not in _CACHE_DTYPES or ckv_cache.dtype == torch.float8_e5m2:
        raise TypeError(f"ckv_cache: unsupported dtype {ckv_cache.dtype}; expected float16, bfloat16, float32 or "
                        f"float8_e4m3fn")
    if append_ckv.dtype != ckv_cache.dtype and (append_ckv.dtype, ckv_cache.dtype) not in _CAST_PAIRS:
        raise TypeError(f"append_ckv: dtype {append_ckv.dtype} cannot be appended to a {ckv_cache.dtype} cache")
    num_pages, page_size = ckv_cache.shape[:2]
    if ckv_cache.shape[2] != _k.MLA_D_CKV or tuple(kpe_cache.shape) != (num_pages, page_size, _k.MLA_D_KPE):
        raise ValueError(f"kpe_cache/ckv_cache: expected [num_pages, page_size, {_k.MLA_D_CKV}] and [num_pages, "
                         f"page_size, {_k.MLA_D_KPE}], got {list(ckv_cache.shape)} and {list(kpe_cache.shape)}")
    if page_size < 1:
        raise ValueError("ckv_cache: page_size must be at least 1")
    batch_indices = index_tensor("batch_indices", batch_indices, numel=nnz, device=device)
    positions = index_tensor("positions", positions, numel=nnz, device=device)
    kv_indices = index_tensor("kv_indices", kv_indices, device=device)
    kv_indptr = index_tensor("kv_indptr", kv_indptr, min_numel=1, device=device)
    kv_last_page_len = index_tensor("kv_last_page_len", kv_last_page_len, numel=kv_indptr.numel() - 1, device=device)
    if _checks.ENABLED:
        _checks.check_paged_kv(kv_indptr, kv_indices, kv_last_page_len, page_size, num_pages)
        _checks.check_positions("positions", positions, batch_indices, kv_indptr, kv_last_page_len, page_size)
    if torch.compiler.is_compiling():
        _append_paged_mla_kv_cache_op(append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache,
                                      kv_indices, kv_indptr)
    else:
        _launch_append_mla(append_ckv, append_kpe, batch_indices, positions, ckv_cache, kpe_cache, kv_indices,
                           kv_indptr)


def get_batch_indices_positions(
    append_indptr: torch.Tensor,
    seq_lens: torch.Tensor,
    nnz: int,
    batch_indices: Optional[torch.Tensor] = None,
    positions: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Convert a ragged append indptr and the KV lengths into per-row batch indices and positions.

    Row ``append_indptr[b] + i`` gets batch index ``b`` and position
    ``seq_lens[b] - (append_indptr[b+1] - append_indptr[b]) + i``: its place in the request's full
    KV sequence, the appended rows being the last ones.

    Parameters
    ----------
    append_indptr : torch.Tensor
        Indptr of the ragged append, shape ``[batch_size + 1]``, dtype ``torch.int32`` or
        ``torch.int64``.
    seq_lens : torch.Tensor
        KV length of each request including the appended rows, shape ``[batch_size]``, dtype
        ``torch.int32`` or ``torch.int64``.
    nnz : int
        Rows of the outputs, at least ``append_indptr[-1]`` (a CUDA graph sizes them for its largest
        batch): rows past ``append_indptr[-1]`` get batch index -1 and position 0 (FlashInfer marks
        them -1 too; ``append_paged_kv_cache`` skips them), and rows of an ``append_indptr`` that
        runs past ``nnz`` are not written. In checked mode, ``append_indptr`` must start at 0, not
        decrease and end at most at ``nnz``, and ``seq_lens[b]`` must be at least request ``b``'s
        appended rows.
    batch_indices, positions : torch.Tensor, optional
        Preallocated outputs (fixed buffers under CUDA graphs), shape ``[nnz]``, dtype
        ``torch.int32``, contiguous, on ``append_indptr``'s device; written and returned.

    Returns
    -------
    batch_indices : torch.Tensor
        shape ``[nnz]``, dtype ``torch.int32`` (the given tensor, when preallocated).
    positions : torch.Tensor
        shape ``[nnz]``, dtype ``torch.int32`` (the given tensor, when preallocated).
    """
    # Once per step, like plan(): strided inputs are made contiguous.
    append_indptr = index_tensor("append_indptr", append_indptr, dtypes=INT32_64, min_numel=1, layout="copy")
    device = append_indptr.device
    _check_kernel_device("append_indptr", append_indptr)
    batch_size = append_indptr.numel() - 1
    seq_lens = index_tensor("seq_lens", seq_lens, dtypes=INT32_64, device=device, layout="copy")
    if seq_lens.numel() != batch_size:
        raise ValueError(f"seq_lens: expected {batch_size} entries (len(append_indptr) - 1), got {seq_lens.numel()}")
    nnz = int(nnz)
    if nnz < 0:
        raise ValueError(f"nnz: expected a non-negative int, got {nnz}")
    if _checks.ENABLED:
        _checks.check_indptr("append_indptr", append_indptr, at_most=nnz, at_most_name="nnz")
        rows = append_indptr[1:] - append_indptr[:-1]
        _checks.require(seq_lens < rows, lambda i: f"seq_lens[{i[0]}] = {seq_lens[i].item()}: expected at least "
                        f"{rows[i].item()}, the rows appended to request {i[0]}")
    if batch_indices is None:
        batch_indices = torch.full((nnz,), -1, dtype=torch.int32, device=device)
    else:
        index_tensor("batch_indices", batch_indices, numel=nnz, device=device).fill_(-1)
    if positions is None:
        positions = torch.zeros((nnz,), dtype=torch.int32, device=device)
    else:
        index_tensor("positions", positions, numel=nnz, device=device).zero_()
    if batch_size > 0 and nnz > 0:
        _k.batch_indices_positions_kernel[(batch_size,)](
            append_indptr, seq_lens, batch_indices, positions, nnz, BLOCK=_k.POSITIONS_BLOCK, num_warps=4
        )
    return batch_indices, positions


def get_seq_lens(kv_indptr: torch.Tensor, kv_last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    r"""KV length of each request: ``max(num_pages - 1, 0) * page_size + kv_last_page_len``.

    Parameters
    ----------
    kv_indptr : torch.Tensor
        Page-table indptr, shape ``[batch_size + 1]``, dtype ``torch.int32``.
    kv_last_page_len : torch.Tensor
        Entries in the last page of each request, shape ``[batch_size]``, dtype ``torch.int32``.
    page_size : int
        Entries per page.

    In checked mode, ``kv_indptr`` must start at 0 and not decrease, and ``kv_last_page_len``
    be in ``[1, page_size]`` for a request with pages (``[0, page_size]`` without).

    Returns
    -------
    seq_lens : torch.Tensor
        shape ``[batch_size]``, dtype ``torch.int32``.
    """
    # Plain torch ops: any strides are read correctly.
    kv_indptr = index_tensor("kv_indptr", kv_indptr, min_numel=1, layout="any")
    kv_last_page_len = index_tensor("kv_last_page_len", kv_last_page_len, numel=kv_indptr.numel() - 1,
                                    device=kv_indptr.device, layout="any")
    page_size = int(page_size)
    if page_size < 1:
        raise ValueError(f"page_size: expected a positive int, got {page_size}")
    if _checks.ENABLED:
        _checks.check_indptr("kv_indptr", kv_indptr)
        _checks.check_last_page_len("kv_last_page_len", kv_last_page_len, kv_indptr, page_size)
    num_pages = kv_indptr[1:] - kv_indptr[:-1]
    return (torch.clamp(num_pages - 1, min=0) * page_size + kv_last_page_len).to(torch.int32)
