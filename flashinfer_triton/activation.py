"""Gated activations: FlashInfer's ``silu_and_mul``, ``gelu_and_mul`` and ``gelu_tanh_and_mul``
on one Triton kernel (``kernels/activation.py``).

``out = act(input[..., :d]) * input[..., d:]`` computed in float32 and rounded once.
``enable_pdl`` is accepted for compatibility and has no effect. Unlike FlashInfer, any ``d`` is
accepted (FlashInfer requires ``2 * d * itemsize`` to be a multiple of 16 bytes). Each function
is also a ``torch.library`` custom op that ``torch.compile`` sees; eager calls launch directly.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._utils import check_tensor
from .kernels.activation import ACT_GELU, ACT_GELU_TANH, ACT_SILU, act_and_mul_kernel, act_config

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["silu_and_mul", "gelu_and_mul", "gelu_tanh_and_mul"]


def _as_rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """A [rows, width] view of ``t`` (no copy) when its leading dimensions collapse, else None."""
    if t.dim() == 1:
        return t.unsqueeze(0)
    if t.dim() == 2:
        return t
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


def _launch_act(out: torch.Tensor, input: torch.Tensor, act: int) -> None:
    d = out.shape[-1]
    if out.numel() == 0:
        return
    x = _as_rows("input", input)
    if x is None:
        x = input.reshape(-1, input.shape[-1])  # copies: the leading dimensions do not collapse
    o = _as_rows("out", out)
    tmp = None
    if o is None:
        tmp = o = torch.empty(out.shape, dtype=out.dtype, device=out.device).view(-1, d)
    n_rows = x.shape[0]
    block, rows, warps = act_config(d)
    grid = ((n_rows + rows - 1) // rows, (d + block - 1) // block)
    act_and_mul_kernel[grid](x, o, n_rows, d, x.stride(0), o.stride(0), ACT=act, BLOCK=block, ROWS=rows, num_warps=warps)
    if tmp is not None:
        out.copy_(tmp.view(out.shape))


@torch.library.custom_op("flashinfer_triton::act_and_mul", mutates_args=("out",))
def _act_and_mul_op(out: torch.Tensor, input: torch.Tensor, act: int) -> None:
    _launch_act(out, input, act)


@_act_and_mul_op.register_fake
def _(out, input, act):
    return None


def _act_and_mul(input, out, act: int) -> torch.Tensor:
    check_tensor("input", input, dtypes=_FLOAT_DTYPES, last_dim_contiguous=True)
    if input.dim() == 0 or input.shape[-1] % 2:
        raise ValueError(f"input: expected shape [..., 2 * d], got {list(input.shape)}")
    out_shape = list(input.shape[:-1]) + [input.shape[-1] // 2]
    if out is None:
        out = torch.empty(out_shape, dtype=input.dtype, device=input.device)
    else:
        check_tensor("out", out, dtypes=(input.dtype,), device=input.device, last_dim_contiguous=True)
        if list(out.shape) != out_shape:
            raise ValueError(f"out: expected shape {out_shape}, got {list(out.shape)}")
    if torch.compiler.is_compiling():
        _act_and_mul_op(out, input, act)
    else:
        _launch_act(out, input, act)
    return out


_DOC = r"""

    Parameters
    ----------
    input : torch.Tensor
        shape: ``[..., 2 * d]``, dtype: ``torch.float16``, ``torch.bfloat16`` or ``torch.float32``,
        last dimension contiguous.
    out : Optional[torch.Tensor]
        Written in place if given: shape ``[..., d]``, dtype of ``input``.
    enable_pdl : Optional[bool]
        Accepted for compatibility; no effect.

    Returns
    -------
    torch.Tensor
        shape: ``[..., d]``, dtype of ``input`` (``out`` when given).
    """


def silu_and_mul(input: torch.Tensor, out: Optional[torch.Tensor] = None, enable_pdl: Optional[bool] = None) -> torch.Tensor:
    return _act_and_mul(input, out, ACT_SILU)


def gelu_and_mul(input: torch.Tensor, out: Optional[torch.Tensor] = None, enable_pdl: Optional[bool] = None) -> torch.Tensor:
    return _act_and_mul(input, out, ACT_GELU)


def gelu_tanh_and_mul(input: torch.Tensor, out: Optional[torch.Tensor] = None, enable_pdl: Optional[bool] = None) -> torch.Tensor:
    return _act_and_mul(input, out, ACT_GELU_TANH)


silu_and_mul.__doc__ = "Fused SiLU and mul: ``silu(input[..., :d]) * input[..., d:]`` with ``silu(x) = x / (1 + exp(-x))``." + _DOC
gelu_and_mul.__doc__ = "Fused GELU (erf) and mul: ``gelu(input[..., :d]) * input[..., d:]``." + _DOC
gelu_tanh_and_mul.__doc__ = "Fused GELU (tanh approximation) and mul: ``gelu_tanh(input[..., :d]) * input[..., d:]``." + _DOC
