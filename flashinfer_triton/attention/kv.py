"""KV views (how the kernel addresses K and V) and the one host-side page-table parser.

Every attention API reads its page table through ``read_page_table``: one device-to-host copy when
the CSR offsets live on the device (none when they are on the host, as FlashInfer's users pass
them), checks with errors naming the argument, and per-request KV lengths
``page_size * (num_pages - 1) + last_page_len``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .. import _checks
from .._utils import check_int32_index, check_tensor
from .options import KV_DTYPES


@dataclass
class KVView:
    """K and V addressed as ``page * stride_p + slot * stride_t + head * stride_h + d`` (ragged KV:
    page 0, slot = token)."""

    k: torch.Tensor
    v: torch.Tensor
    stride_kp: int
    stride_kt: int
    stride_kh: int
    stride_vp: int
    stride_vt: int
    stride_vh: int
    page_size: int
    num_kv_heads: int
    head_dim: int
    head_dim_vo: int
    num_pages: int


def check_layout(kv_layout: str) -> str:
    if kv_layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout: expected 'NHD' or 'HND', got {kv_layout!r}")
    return kv_layout


def _page_strides(t: torch.Tensor, kv_layout: str):
    return (t.stride(0), t.stride(1), t.stride(2)) if kv_layout == "NHD" else (t.stride(0), t.stride(2), t.stride(1))


def _page_size_one(t: torch.Tensor, kv_layout: str) -> torch.Tensor:
    """A page-size-1 cache without its page-slot dimension (FlashInfer's ``_expand_4d`` /
    ``_expand_5d``): insert it, ``[.., H_kv, D]`` -> ``[.., 1, H_kv, D]`` (NHD) or ``[.., H_kv, 1, D]`` (HND)."""
    return t.unsqueeze(-3) if kv_layout == "NHD" else t.unsqueeze(-2)


def unpack_paged_kv_cache(paged_kv_cache, kv_layout: str, name: str = "paged_kv_cache") -> KVView:
    """Accept ``[num_pages, 2, page_size, H_kv, D]`` (NHD) / ``[num_pages, 2, H_kv, page_size, D]``
    (HND), or a ``(k_cache, v_cache)`` tuple of 4-D tensors in the same layout. Page size 1 may
    drop the page-slot dimension, as FlashInfer allows: a 4-D ``[num_pages, 2, H_kv, D]`` tensor or
    a tuple of 3-D ``[num_slots, H_kv, D]`` tensors (SGLang's token pool)."""
    if isinstance(paged_kv_cache, (tuple, list)):
        if len(paged_kv_cache) != 2:
            raise ValueError(f"{name}: a tuple must be (k_cache, v_cache), got {len(paged_kv_cache)} entries")
        k, v = paged_kv_cache
        if isinstance(k, torch.Tensor) and k.dim() == 3:
            k = _page_size_one(k, kv_layout)
        if isinstance(v, torch.Tensor) and v.dim() == 3:
            v = _page_size_one(v, kv_layout)
        check_tensor(f"{name}[0] (k_cache)", k, dtypes=KV_DTYPES, ndim=4, last_dim_contiguous=True)
        check_tensor(f"{name}[1] (v_cache)", v, dtypes=(k.dtype,), ndim=4, device=k.device, last_dim_contiguous=True)
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"{name}: k_cache {tuple(k.shape)} and v_cache {tuple(v.shape)} differ in pages/heads/slots")
        kp, kt, kh = _page_strides(k, kv_layout)
        vp, vt, vh = _page_strides(v, kv_layout)
    else:
        if isinstance(paged_kv_cache, torch.Tensor) and paged_kv_cache.dim() == 4:
            paged_kv_cache = _page_size_one(paged_kv_cache, kv_layout)
        check_tensor(name, paged_kv_cache, dtypes=KV_DTYPES, ndim=5, last_dim_contiguous=True)
        if paged_kv_cache.shape[1] != 2:
            raise ValueError(f"{name}: expected dimension 1 of size 2 (K and V), got shape {tuple(paged_kv_cache.shape)}")
        k, v = paged_kv_cache[:, 0], paged_kv_cache[:, 1]
        kp, kt, kh = _page_strides(k, kv_layout)
        vp, vt, vh = kp, kt, kh
    if kv_layout == "NHD":
        num_pages, page_size, h_kv, d = k.shape
    else:
        num_pages, h_kv, page_size, d = k.shape
    return KVView(k, v, kp, kt, kh, vp, vt, vh, page_size, h_kv, d, v.shape[-1], num_pages)


def unpack_ragged_kv(k: torch.Tensor, v: torch.Tensor, kv_layout: str) -> KVView:
    """Contiguous-token K/V: ``[kv_len, H_kv, D]`` (NHD) or ``[H_kv, kv_len, D]`` (HND)."""
    check_tensor("k", k, dtypes=KV_DTYPES, ndim=3, last_dim_contiguous=True)
    check_tensor("v", v, dtypes=(k.dtype,), ndim=3, device=k.device, last_dim_contiguous=True)
    if kv_layout == "NHD":
        n, h, d = k.shape
        kt, kh, vt, vh = k.stride(0), k.stride(1), v.stride(0), v.stride(1)
        nv, hv = v.shape[0], v.shape[1]
    else:
        h, n, d = k.shape
        kt, kh, vt, vh = k.stride(1), k.stride(0), v.stride(1), v.stride(0)
        hv, nv = v.shape[0], v.shape[1]
    if (nv, hv) != (n, h):
        raise ValueError(f"v: expected {n} tokens and {h} heads like k, got shape {tuple(v.shape)}")
    return KVView(k, v, 0, kt, kh, 0, vt, vh, 1, h, d, v.shape[-1], 1)


def ragged_kv_len(kv: KVView, kv_layout: str) -> int:
    return kv.k.shape[0] if kv_layout == "NHD" else kv.k.shape[1]


def check_page_size(page_size) -> int:
    if not isinstance(page_size, (int, np.integer)) or isinstance(page_size, bool) or page_size < 1:
        raise ValueError(f"page_size: expected a positive int, got {page_size!r}")
    return int(page_size)


def host_int64(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Concatenate int32 index tensors on the host as int64: no device work when they already live
    there, otherwise one device-to-host copy for all of them."""
    if all(t.is_cpu for t in tensors):
        return np.concatenate([t.numpy() for t in tensors], dtype=np.int64) if tensors else np.zeros(0, np.int64)
    device = next(t.device for t in tensors if t.device.type != "cpu")
    return torch.cat([t.to(device) for t in tensors]).cpu().numpy().astype(np.int64)


def check_csr(name: str, indptr_h: np.ndarray, count: Optional[int] = None, count_name: str = "",
              offset: bool = False) -> np.ndarray:
    """``indptr`` must start at 0, be non-decreasing and end at ``count`` entries; returns the lengths.
    With ``offset`` (page tables, as FlashInfer reads them) it may start above 0 and end before
    ``count``: request b owns entries ``indptr[b]:indptr[b+1]`` of a longer array (vLLM plans its
    prefills over a slice of the batch's indptr and all its indices; SGLang pads the indices)."""
    lens = indptr_h[1:] - indptr_h[:-1]
    if indptr_h.shape[0] and ((indptr_h[0] < 0 if offset else indptr_h[0] != 0) or lens.min(initial=0) < 0):
        raise ValueError(f"{name}: expected a non-decreasing CSR offset array starting at "
                         f"{'a non-negative offset' if offset else '0'}")
    if count is not None and indptr_h.shape[0] and (indptr_h[-1] > count if offset else indptr_h[-1] != count):
        raise ValueError(f"{count_name}: expected {'at least ' if offset else ''}{name}[-1] = {indptr_h[-1]} "
                         f"entries, got {count}")
    return lens


@dataclass
class PageTable:
    """A page table read to the host: ``indptr`` [B+1], ``kv_len`` and ``last_page_len`` [B] int64
    numpy arrays, the
    page ids as an int32 device tensor (contiguous), and any extra arrays read in the same copy."""

    indptr: np.ndarray
    kv_len: np.ndarray
    last_page_len: np.ndarray
    indices: torch.Tensor
    extra: list
    max_page_id: Optional[int]  # known when the page ids were read on the host
    ids: Optional[np.ndarray] = None  # the page ids as int64, when asked for (``read_ids``)


def read_page_table(indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, page_size: int,
                    device: torch.device, names=("indptr", "indices", "last_page_len"),
                    extra: Sequence[torch.Tensor] = (), read_ids: bool = False) -> PageTable:
    """Check and read a CSR page table (int32 ``indptr [B+1]``, ``indices`` holding at least
    ``indptr[-1]`` entries, ``last_page_len [B]``) plus ``extra`` int32 tensors (e.g.
    ``qo_indptr``), all in one device-to-host copy. Request b's pages are
    ``indices[indptr[b]:indptr[b+1]]``: ``indptr`` may start above 0 and ``indices`` run past
    ``indptr[-1]`` (those entries are never read, nor checked). ``indices`` may stay on the device
    and is not read unless it is on the host or ``read_ids`` asks for it (then in the same copy); a
    strided view of it is made contiguous (the kernel reads it as a dense array)."""
    n_indptr, n_indices, n_last = names
    check_int32_index(n_indptr, indptr)
    batch = indptr.numel() - 1
    if batch < 0:
        raise ValueError(f"{n_indptr}: expected at least one entry ([batch_size + 1])")
    check_int32_index(n_indices, indices)
    check_int32_index(n_last, last_page_len, numel=batch)
    page_size = check_page_size(page_size)
    read_ids = read_ids or _checks.ENABLED  # checked mode: device page ids too (then run() range-checks them)
    host = host_int64([indptr, last_page_len] + list(extra) + ([indices] if read_ids else []))
    indptr_h, last_h = host[: batch + 1], host[batch + 1: 2 * batch + 1]
    extra_h, pos = [], 2 * batch + 1
    for t in extra:
        extra_h.append(host[pos: pos + t.numel()])
        pos += t.numel()
    num_pages = check_csr(n_indptr, indptr_h, indices.numel(), n_indices, offset=True)
    # In [1, page_size] with pages, [0, page_size] without: at least has_pages (0 or 1), at most page_size.
    if ((last_h < (num_pages > 0)) | (last_h > page_size)).any():
        raise ValueError(f"{n_last}: every entry must be in [1, page_size={page_size}] for a request with pages "
                         f"(0 for a request without)")
    kv_len = np.maximum((num_pages - 1) * page_size + last_h, 0)  # a request without pages: -page_size + [0, page_size]
    max_page_id = ids = None
    if read_ids or indices.device.type == "cpu":  # free to check here; device page ids are checked in checked mode
        ids = host[pos:] if read_ids else indices.numpy()
        used = ids[indptr_h[0]: indptr_h[-1]] if batch else ids[:0]
        if used.size:
            if int(used.min()) < 0:
                raise ValueError(f"{n_indices}: page ids must be non-negative, got {int(used.min())}")
            max_page_id = int(used.max())
        else:
            max_page_id = -1
    if not indices.is_contiguous():
        indices = indices.contiguous()
    if indices.device != device:
        indices = indices.to(device, non_blocking=True)
    return PageTable(indptr_h, kv_len, last_h, indices, extra_h, max_page_id, ids if read_ids else None)
