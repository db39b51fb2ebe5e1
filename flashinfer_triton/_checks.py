"""Checks of index, length and mask tensor arguments, and the checked mode.

Two layers, each raising ``ValueError``/``TypeError`` that names the argument:

**Structure, always on, host only** (:func:`index_tensor`): dtype, rank, device, number of
entries and memory layout. A non-contiguous view (``table[:, 0]``, ``x[::2]``) would be read by a
kernel as if it were contiguous, so every index argument passes through this one helper, and each
call site picks a layout rule:

- ``"reject"`` in hot paths, functions called once per layer per step (``append_paged_kv_cache``,
  ``apply_rope*``, a wrapper's ``run()``): a clear error, as FlashInfer's ``CHECK_INPUT`` gives. A
  silent copy there would add a kernel and an allocation to every call, and break CUDA-graph
  replay of a buffer that the caller updates in place.
- ``"copy"`` at plan time and in functions that read values on the host anyway (``plan()``,
  ``get_batch_indices_positions``, ``segment_packbits``): made contiguous once.
- ``"any"`` where the kernel takes the stride (RoPE ``pos_ids``/``positions``).

**Values, checked mode only** (off by default): ``FLASHINFER_TRITON_CHECKED=1`` in the environment,
or ``with flashinfer_triton.checked():`` (also a decorator, ``@flashinfer_triton.checked()``;
``checked(False)`` turns it off inside). The API functions then validate tensor values before
launching (page ids, positions, indptr, lengths, sampler rows, RoPE cache rows, NaN where asked)
and raise a ``ValueError`` naming the argument and its first bad element, e.g.
``kv_indices[5] = 70: expected a page id in [0, 64)``. Each check reads its tensors back to the
host (one synchronization per check): a debugging mode, not for production. The mode is
process-wide (all threads), and the checks are skipped while a CUDA graph is being captured or
``torch.compile`` traces (the values are not known then); run the step once eagerly to check it.

Call sites keep the default path fast by reading the module flag only:
``if _checks.ENABLED: _checks.check_indptr(...)`` (a module attribute read, ~20 ns). The
``check_*`` functions validate unconditionally when called, so tests and users may call them
directly.

What the default mode does with bad values: never an out-of-bounds access in this library's own
page and RoPE kernels (an append row aimed outside its request's pages or the cache is dropped; a
RoPE position outside ``cos_sin_cache`` gives NaN for that token); FlashInfer reads and writes
wherever the index points.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional, Sequence

import torch

__all__ = [
    "ENABLED", "checked", "index_tensor",
    "check_indptr", "check_in_range", "check_page_ids", "check_last_page_len", "check_paged_kv",
    "check_positions", "check_no_nan", "require",
]

INT32 = (torch.int32,)
INT32_64 = (torch.int32, torch.int64)
_LAYOUTS = ("reject", "copy", "any")


def _env_flag() -> bool:
    return os.environ.get("FLASHINFER_TRITON_CHECKED", "0").strip().lower() not in ("", "0", "false", "off", "no")


# Read by call sites as ``_checks.ENABLED`` (never ``from ._checks import ENABLED``: that copies it).
ENABLED: bool = _env_flag()


class checked(contextlib.ContextDecorator):
    """Checked mode for a block or a function: ``with flashinfer_triton.checked(): ...`` or
    ``@flashinfer_triton.checked()``. ``checked(False)`` turns it off inside. Nests; on exit the
    previous state returns. Process-wide: other threads see the mode while the block runs."""

    def __init__(self, enabled: bool = True):
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__} (write @checked(), not @checked)")
        self.enabled = enabled
        self._saved = []

    def __enter__(self):
        global ENABLED
        self._saved.append(ENABLED)
        ENABLED = self.enabled
        return self

    def __exit__(self, *exc):
        global ENABLED
        ENABLED = self._saved.pop()
        return False


# --------------------------------------------------------------------------- structure


def _dtype_name(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def index_tensor(
    name: str,
    t,
    *,
    dtypes: Sequence[torch.dtype] = INT32,
    ndim: int = 1,
    numel: Optional[int] = None,
    min_numel: int = 0,
    device: Optional[torch.device] = None,
    layout: str = "reject",
) -> torch.Tensor:
    """Check an index, length or mask tensor argument; return it (made contiguous under ``"copy"``).

    Parameters
    ----------
    name : str
        The argument's name, as the user wrote it (``"kv_indptr"``); every message starts with it.
    t : torch.Tensor
        The argument.
    dtypes : Sequence[torch.dtype]
        Accepted dtypes; default int32 only.
    ndim : int
        Expected rank; default 1.
    numel, min_numel : int
        Exact number of entries when ``numel`` is given; at least ``min_numel`` entries.
    device : torch.device, optional
        The device it must be on.
    layout : str
        ``"reject"``: a non-contiguous view raises ``ValueError`` (hot paths); ``"copy"``: it is
        made contiguous (plan time, host-synchronizing functions); ``"any"``: the caller's kernel
        takes the strides.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {' or '.join(map(_dtype_name, dtypes))}, got {_dtype_name(t.dtype)}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {list(t.shape)}")
    n = t.numel()
    if numel is not None and n != numel:
        raise ValueError(f"{name}: expected {numel} entries, got {n}")
    if n < min_numel:
        raise ValueError(f"{name}: expected at least {min_numel} entries, got {n}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    if layout != "any" and not t.is_contiguous():
        if layout == "copy":
            return t.contiguous()
        if layout not in _LAYOUTS:
            raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
        raise ValueError(
            f"{name}: expected a contiguous tensor, got a strided view (shape {list(t.shape)}, strides "
            f"{list(t.stride())}); pass {name}.contiguous()"
        )
    return t


# --------------------------------------------------------------------------- value checks (checked mode)


def _skip() -> bool:
    """Values are unknown while torch.compile traces or a CUDA graph is captured."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def require(bad: torch.Tensor, message: Callable[[tuple], str]) -> None:
    """Raise ``ValueError(message(index))`` for the first True element of the boolean tensor
    ``bad`` (``index`` a tuple into its shape). One host synchronization. The primitive the
    ``check_*`` functions are built on; usable for one-off checks at a call site."""
    if bad.numel() == 0 or _skip():
        return
    flat = bad.reshape(-1).to(torch.uint8)
    first = flat.argmax()
    i, hit = torch.stack([first, flat[first].to(first.dtype)]).tolist()
    if hit:
        idx = (i,) if bad.dim() == 1 else tuple(int(v) for v in torch.unravel_index(torch.tensor(i), bad.shape))
        raise ValueError(message(idx))


def _any(*bad: torch.Tensor) -> bool:
    """Whether any mask has a True element: one synchronization for several conditions."""
    return bool(torch.stack([m.any() for m in bad]).any().item())


def _at(name: str, t: torch.Tensor, idx: tuple) -> str:
    return f"{name}[{', '.join(map(str, idx))}] = {t[idx].item()}"


def check_in_range(name: str, t: torch.Tensor, lo: int, hi: int, what: str = "a value") -> None:
    """Every entry of ``t`` in ``[lo, hi)``.

    For ``batch_indices`` (``[0, batch_size)``), sampler ``indices`` (``[0, probs.shape[0])``),
    draft token ids (``[0, vocab)``), RoPE ``positions`` (``[0, cos_sin_cache.shape[0])``).
    Message: ``indices[3] = 9: expected a row of probs in [0, 8)``.
    """
    x = t.to(torch.int64) if not t.dtype.is_floating_point else t  # int32 compares wrap past 2**31
    require((x < lo) | (x >= hi), lambda idx: f"{_at(name, t, idx)}: expected {what} in [{lo}, {hi})")


def check_indptr(name: str, indptr: torch.Tensor, *, total: Optional[int] = None, total_name: str = "",
                 at_most: Optional[int] = None, at_most_name: str = "") -> None:
    """A CSR indptr: ``indptr[0] == 0``, non-decreasing, and ``indptr[-1] == total`` (when given,
    e.g. ``qo_indptr`` against ``q.shape[0]``) or ``indptr[-1] <= at_most`` (when given, e.g.
    ``kv_indptr`` against ``kv_indices.numel()``, which may be a larger CUDA-graph buffer).

    ``total_name``/``at_most_name`` say where the bound comes from, for the message:
    ``kv_indptr[-1] = 12: expected at most 10 (kv_indices.numel())``.
    """
    if indptr.numel() == 0 or _skip():
        return
    x = indptr.to(torch.int64)
    first, last = x[:1], x[-1:]
    falls = x[1:] < x[:-1]
    over = last != total if total is not None else (last > at_most if at_most is not None else last < 0)
    if not _any(first != 0, falls, over):
        return
    require(first != 0, lambda idx: f"{name}[0] = {x[0].item()}: expected 0 (an indptr starts at 0)")
    require(falls, lambda idx: f"{name}[{idx[0] + 1}] = {x[idx[0] + 1].item()} < {name}[{idx[0]}] = "
                               f"{x[idx[0]].item()}: expected a non-decreasing indptr")
    if total is not None:
        raise ValueError(f"{name}[-1] = {x[-1].item()}: expected {total}" + (f" ({total_name})" if total_name else ""))
    raise ValueError(f"{name}[-1] = {x[-1].item()}: expected at most {at_most}" + (f" ({at_most_name})" if at_most_name else ""))


def check_page_ids(name: str, indices: torch.Tensor, num_pages: Optional[int] = None,
                   indptr: Optional[torch.Tensor] = None) -> None:
    """Page ids in ``[0, num_pages)`` (``num_pages``: the cache's first dimension; None: only
    non-negative, for plan time when the cache is not known yet). With ``indptr``, only the first
    ``indptr[-1]`` entries are checked (the rest of a fixed CUDA-graph buffer is never read).
    Message: ``kv_indices[5] = 70: expected a page id in [0, 64) (the cache's pages)``."""
    if indices.numel() == 0 or _skip():
        return
    bad = indices < 0
    if num_pages is not None:
        bad |= indices.to(torch.int64) >= num_pages
    if indptr is not None and indptr.numel() > 0:
        bad &= torch.arange(indices.numel(), device=indices.device) < indptr[-1].to(indices.device)
    want = f"in [0, {num_pages}) (the cache's pages)" if num_pages is not None else "that is non-negative"
    require(bad, lambda idx: f"{_at(name, indices, idx)}: expected a page id {want}")


def check_last_page_len(name: str, last_page_len: torch.Tensor, indptr: torch.Tensor, page_size: int) -> None:
    """Entries in each request's last page: ``[1, page_size]`` for a request with pages,
    ``[0, page_size]`` for one without (FlashInfer's kernels give it length 0 either way).
    Message: ``kv_last_page_len[2] = 0: expected a value in [1, 16] (request 2 has 3 pages)``."""
    if last_page_len.numel() == 0 or _skip():
        return
    pages = (indptr[1:] - indptr[:-1]).to(torch.int64)
    lo = (pages > 0).to(torch.int64)
    last = last_page_len.to(torch.int64)
    bad = (last < lo) | (last > page_size)
    require(bad, lambda idx: f"{_at(name, last_page_len, idx)}: expected a value in "
                                f"[{int(lo[idx].item())}, {page_size}] (request {idx[0]} has {int(pages[idx].item())} pages)")


def check_paged_kv(indptr: torch.Tensor, indices: torch.Tensor, last_page_len: torch.Tensor, page_size: int,
                   num_pages: Optional[int] = None,
                   names: Sequence[str] = ("kv_indptr", "kv_indices", "kv_last_page_len")) -> None:
    """A whole CSR page table: :func:`check_indptr` (``indptr[-1] <= indices.numel()``),
    :func:`check_last_page_len`, and :func:`check_page_ids` (``[0, num_pages)`` when the cache's
    page count is known, else non-negative). ``names``: the caller's argument names, e.g.
    ``("paged_kv_indptr", "paged_kv_indices", "paged_kv_last_page_len")``."""
    n_indptr, n_indices, n_last = names
    check_indptr(n_indptr, indptr, at_most=indices.numel(), at_most_name=f"{n_indices}.numel()")
    check_last_page_len(n_last, last_page_len, indptr, page_size)
    check_page_ids(n_indices, indices, num_pages, indptr)


def check_positions(name: str, positions: torch.Tensor, batch_indices: torch.Tensor, kv_indptr: torch.Tensor,
                    kv_last_page_len: torch.Tensor, page_size: int, batch_name: str = "batch_indices") -> None:
    """Append rows: ``batch_indices`` in ``[0, batch_size)`` and each ``positions[i]`` inside its
    request's KV sequence, ``[0, seq_len)`` with ``seq_len = (pages - 1) * page_size +
    last_page_len`` (0 for a request without pages), so a row lands in its own request's pages.
    Message: ``positions[7] = 40: expected a position in [0, 33) (request batch_indices[7] = 1:
    3 pages of 16, last_page_len 1)``."""
    if positions.numel() == 0 or _skip():
        return
    batch_size = kv_last_page_len.numel()
    check_in_range(batch_name, batch_indices, 0, batch_size, "a request")
    pages = (kv_indptr[1:] - kv_indptr[:-1]).to(torch.int64)
    seq = torch.where(pages > 0, (pages - 1) * page_size + kv_last_page_len.to(torch.int64), torch.zeros_like(pages))
    b = batch_indices.to(torch.int64)
    seq_b = seq.index_select(0, b)
    p = positions.to(torch.int64)
    bad = (p < 0) | (p >= seq_b)

    def msg(idx):
        r = int(b[idx].item())
        return (f"{_at(name, positions, idx)}: expected a position in [0, {int(seq_b[idx].item())}) "
                f"(request {batch_name}[{idx[0]}] = {r}: {int(pages[r].item())} pages of {page_size}, "
                f"last_page_len {int(kv_last_page_len[r].item())})")

    require(bad, msg)


def check_no_nan(name: str, t: torch.Tensor) -> None:
    """No NaN in ``t`` (sampling probabilities or logits, with ``check_nan=True`` or in checked
    mode). Message: ``probs[3, 17] = nan: expected no NaN``."""
    if t.numel() == 0 or not t.dtype.is_floating_point:
        return
    require(torch.isnan(t), lambda idx: f"{name}[{', '.join(map(str, idx))}] = nan: expected no NaN")

