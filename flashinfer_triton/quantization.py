"""Bit packing, FlashInfer 0.6.x API: ``packbits``, ``segment_packbits`` (``numpy.packbits`` semantics)."""

from __future__ import annotations

from typing import Tuple

import torch
import triton

from . import _checks
from ._checks import INT32_64, index_tensor
from ._utils import check_tensor, interpreter_active
from .kernels import packbits as _k

__all__ = ["packbits", "segment_packbits"]

_BITORDERS = ("big", "little")


def _check_bitorder(bitorder: str) -> bool:
    """True for little."""
    if bitorder not in _BITORDERS:
        raise ValueError(f"bitorder: expected 'big' or 'little', got {bitorder!r}")
    return bitorder == "little"


def _check_x(x) -> torch.Tensor:
    check_tensor("x", x, ndim=1)
    if x.device.type == "cpu" and not interpreter_active():
        raise ValueError("x: expected a CUDA/ROCm tensor, got one on cpu (set TRITON_INTERPRET=1 for the CPU interpreter)")
    if x.dtype.is_complex:
        raise TypeError(f"x: expected a boolean, integer or floating tensor, got {x.dtype}")
    # Nonzero is 1, as numpy.packbits; the kernel reads one byte per element.
    x = x if x.dtype == torch.bool else x != 0
    return x.contiguous().view(torch.uint8)


def _launch_packbits(x: torch.Tensor, little: bool) -> torch.Tensor:
    n = x.numel()
    y = torch.empty(((n + 7) // 8,), dtype=torch.uint8, device=x.device)
    if n > 0:
        grid = (triton.cdiv(y.numel(), _k.BLOCK_BYTES),)
        _k.packbits_kernel[grid](x, y, n, BLOCK=_k.BLOCK_BYTES, LITTLE=little, num_warps=_k.NUM_WARPS)
    return y


@torch.library.custom_op("flashinfer_triton::packbits", mutates_args=())
def _packbits_op(x: torch.Tensor, bitorder: str) -> torch.Tensor:
    return _launch_packbits(_check_x(x), _check_bitorder(bitorder))


@_packbits_op.register_fake
def _(x, bitorder):
    return x.new_empty(((x.shape[0] + 7) // 8,), dtype=torch.uint8)


def packbits(x: torch.Tensor, bitorder: str = "big") -> torch.Tensor:
    r"""Pack a 1-D binary-valued array into bits of a uint8 array, like ``numpy.packbits``.

    Parameters
    ----------
    x : torch.Tensor
        shape ``[n]``, any boolean, integer or floating dtype; nonzero elements are 1.
    bitorder : str
        ``"big"`` (default, as FlashInfer and numpy: element ``8j`` is bit 7 of byte ``j``) or
        ``"little"`` (element ``8j`` is bit 0; the order FlashInfer's attention kernels read for
        packed custom masks).

    Returns
    -------
    y : torch.Tensor
        shape ``[(n + 7) // 8]``, dtype ``torch.uint8``; missing bits of the last byte are 0.
    """
    little = _check_bitorder(bitorder)
    if torch.compiler.is_compiling():
        return _packbits_op(x, bitorder)
    return _launch_packbits(_check_x(x), little)


def segment_packbits(
    x: torch.Tensor, indptr: torch.Tensor, bitorder: str = "big"
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Pack each segment ``x[indptr[i]:indptr[i+1]]`` into bits separately, like ``numpy.packbits``.

    Parameters
    ----------
    x : torch.Tensor
        shape ``[indptr[-1]]`` (at least), any boolean, integer or floating dtype; nonzero is 1.
    indptr : torch.Tensor
        Segment boundaries, shape ``[batch_size + 1]``, dtype ``torch.int32`` or ``torch.int64``,
        non-decreasing, within ``[0, x.numel()]`` (always checked: this function reads it on the
        host); any stride.
    bitorder : str
        ``"big"`` (default) or ``"little"``, as in :func:`packbits`.

    Returns
    -------
    y : torch.Tensor
        shape ``[new_indptr[-1]]``, dtype ``torch.uint8``: ``y[new_indptr[i]:new_indptr[i+1]]``
        holds the packed bits of segment ``i``, its last byte padded with 0 bits.
    new_indptr : torch.Tensor
        shape ``[batch_size + 1]``, dtype ``torch.int32``, with
        ``new_indptr[i+1] - new_indptr[i] == (indptr[i+1] - indptr[i] + 7) // 8``.

    Note
    ----
    The output size depends on ``indptr``'s values: this reads them on the host (one
    synchronization), and is not capturable by CUDA graphs or ``torch.compile(fullgraph=True)``
    (as in FlashInfer).
    """
    little = _check_bitorder(bitorder)
    x = _check_x(x)
    # This function reads indptr on the host anyway: a strided view is copied, once.
    indptr = index_tensor("indptr", indptr, dtypes=INT32_64, min_numel=1, device=x.device, layout="copy")
    batch_size = indptr.numel() - 1
    seglen = indptr[1:] - indptr[:-1]
    packed_len = (seglen + 7) // 8
    new_indptr = torch.zeros((batch_size + 1,), dtype=torch.int32, device=x.device)
    new_indptr[1:] = torch.cumsum(packed_len, 0)
    if batch_size > 0:
        # One host synchronization for everything the launch and the checks need.
        total, max_len, min_seg, first, last = torch.stack(
            [new_indptr[-1].to(torch.int64), packed_len.max().to(torch.int64), seglen.min().to(torch.int64),
             indptr[0].to(torch.int64), indptr[-1].to(torch.int64)]).tolist()
        if min_seg < 0:
            _checks.require(seglen < 0, lambda i: f"indptr[{i[0] + 1}] = {indptr[i[0] + 1].item()} < indptr[{i[0]}] = "
                            f"{indptr[i[0]].item()}: expected a non-decreasing indptr")
        if first < 0:
            raise ValueError(f"indptr[0] = {first}: expected a non-negative start")
        if last > x.numel():
            raise ValueError(f"indptr[-1] = {last}: segments reach past x (x.numel() = {x.numel()})")
    else:
        total, max_len = 0, 0
    y = torch.empty((total,), dtype=torch.uint8, device=x.device)
    if total > 0:
        grid = (batch_size, triton.cdiv(max_len, _k.BLOCK_BYTES))
        _k.segment_packbits_kernel[grid](
            x, indptr.to(torch.int32), new_indptr, y, BLOCK=_k.BLOCK_BYTES, LITTLE=little, num_warps=_k.NUM_WARPS
        )
    return y, new_indptr
