"""Normalization: FlashInfer's ``rmsnorm``, ``fused_add_rmsnorm``, ``gemma_rmsnorm``,
``gemma_fused_add_rmsnorm`` and ``layernorm`` on Triton kernels (``kernels/norm.py``).

All math is float32; outputs are rounded once to the tensor's dtype. ``fused_add_rmsnorm``
stores ``residual + input`` in the residual's dtype but normalizes the float32 sum, as FlashInfer
does. ``enable_pdl`` (programmatic dependent launch) is accepted and has no effect: it is a launch
hint that never changes results.

Each function is also a ``torch.library`` custom op (namespace ``flashinfer_triton``) that
``torch.compile`` sees when it traces; eager calls go straight to the kernel launcher.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._utils import check_shape, check_tensor
from .kernels.norm import layernorm_kernel, norm_config, rmsnorm_kernel

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["rmsnorm", "fused_add_rmsnorm", "gemma_rmsnorm", "gemma_fused_add_rmsnorm", "layernorm"]


# --------------------------------------------------------------------------- checks and launchers


def _check_rows(name: str, t, ref: Optional[torch.Tensor] = None) -> torch.Tensor:
    if ref is None:
        check_tensor(name, t, dtypes=_FLOAT_DTYPES, ndim=(2, 3), last_dim_contiguous=True)
    else:
        check_tensor(name, t, dtypes=(ref.dtype,), device=ref.device, last_dim_contiguous=True)
        check_shape(name, t, list(ref.shape))
    return t


def _check_vector(name: str, t, hidden: int, device, dtypes) -> None:
    check_tensor(name, t, dtypes=dtypes, ndim=1, device=device)
    check_shape(name, t, [hidden])
    if t.stride(0) != 1 and hidden > 1:
        raise ValueError(f"{name}: must be contiguous, got stride {t.stride(0)}")


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps: expected a float, got {type(eps).__name__}")
    if not eps >= 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps}")
    return float(eps)


def _row_layout(t: torch.Tensor):
    """(n_rows, n_inner, stride_outer, stride_inner) for a [B, D] or [B, H, D] tensor."""
    if t.dim() == 2:
        return t.shape[0], 1, t.stride(0), 0
    return t.shape[0] * t.shape[1], t.shape[1], t.stride(0), t.stride(1)


def _launch_rmsnorm(out, input, residual, weight, eps: float, weight_bias: float) -> None:
    n_rows, n_inner, sx_o, sx_i = _row_layout(input)
    if n_rows == 0:
        return
    _, _, so_o, so_i = _row_layout(out)
    fused = residual is not None
    if fused:
        _, _, sr_o, sr_i = _row_layout(residual)
    else:
        residual, sr_o, sr_i = input, 0, 0
    hidden = input.shape[-1]
    block, rows, single, warps = norm_config(hidden)
    grid = (triton_cdiv(n_rows, rows),)
    rmsnorm_kernel[grid](
        input, residual, weight, out,
        n_rows, n_inner, hidden,
        sx_o, sx_i, sr_o, sr_i, so_o, so_i,
        eps, weight_bias,
        FUSED_ADD=fused, BLOCK_D=block, ROWS=rows, SINGLE=single,
        num_warps=warps,
    )


def _launch_layernorm(out, input, gemma, beta, eps: float) -> None:
    n_rows, n_inner, sx_o, sx_i = _row_layout(input)
    if n_rows == 0:
        return
    _, _, so_o, so_i = _row_layout(out)
    hidden = input.shape[-1]
    block, rows, single, warps = norm_config(hidden)
    layernorm_kernel[(triton_cdiv(n_rows, rows),)](
        input, gemma, beta, out,
        n_rows, n_inner, hidden,
        sx_o, sx_i, so_o, so_i,
        eps,
        BLOCK_D=block, ROWS=rows, SINGLE=single,
        num_warps=warps,
    )


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# --------------------------------------------------------------------------- torch.compile ops


@torch.library.custom_op("flashinfer_triton::rmsnorm", mutates_args=("out",))
def _rmsnorm_op(out: torch.Tensor, input: torch.Tensor, weight: torch.Tensor, eps: float, weight_bias: float) -> None:
    _launch_rmsnorm(out, input, None, weight, eps, weight_bias)


@_rmsnorm_op.register_fake
def _(out, input, weight, eps, weight_bias):
    return None


@torch.library.custom_op("flashinfer_triton::fused_add_rmsnorm", mutates_args=("input", "residual"))
def _fused_add_rmsnorm_op(
    input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, weight_bias: float
) -> None:
    _launch_rmsnorm(input, input, residual, weight, eps, weight_bias)


@_fused_add_rmsnorm_op.register_fake
def _(input, residual, weight, eps, weight_bias):
    return None


@torch.library.custom_op("flashinfer_triton::layernorm", mutates_args=("out",))
def _layernorm_op(out: torch.Tensor, input: torch.Tensor, gemma: torch.Tensor, beta: torch.Tensor, eps: float) -> None:
    _launch_layernorm(out, input, gemma, beta, eps)


@_layernorm_op.register_fake
def _(out, input, gemma, beta, eps):
    return None


# --------------------------------------------------------------------------- public API


def _rmsnorm_common(input, weight, eps, out, weight_bias: float) -> torch.Tensor:
    _check_rows("input", input)
    _check_vector("weight", weight, input.shape[-1], input.device, (input.dtype,))
    eps = _check_eps(eps)
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    else:
        _check_rows("out", out, input)
    if torch.compiler.is_compiling():
        _rmsnorm_op(out, input, weight, eps, weight_bias)
    else:
        _launch_rmsnorm(out, input, None, weight, eps, weight_bias)
    return out


def _fused_add_common(input, residual, weight, eps, weight_bias: float) -> None:
    _check_rows("input", input)
    _check_rows("residual", residual, input)
    _check_vector("weight", weight, input.shape[-1], input.device, (input.dtype,))
    eps = _check_eps(eps)
    if torch.compiler.is_compiling():
        _fused_add_rmsnorm_op(input, residual, weight, eps, weight_bias)
    else:
        _launch_rmsnorm(input, input, residual, weight, eps, weight_bias)


def rmsnorm(
    input: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    out: Optional[torch.Tensor] = None,
    enable_pdl: Optional[bool] = None,
) -> torch.Tensor:
    r"""Root mean square normalization: ``out[i] = input[i] / sqrt(mean(input[i]^2) + eps) * weight``.

    Parameters
    ----------
    input : torch.Tensor
        shape: ``[batch_size, hidden_size]`` or ``[batch_size, num_heads, hidden_size]``,
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``torch.float32``. The last dimension must
        be contiguous; the leading dimensions may be strided (e.g. a slice of a fused QKV tensor).
    weight : torch.Tensor
        shape: ``[hidden_size]``, contiguous, dtype: same as ``input``.
    eps : float
        Added to the mean square, default ``1e-6``.
    out : Optional[torch.Tensor]
        Written in place if given: same shape and dtype as ``input``, last dimension contiguous.
    enable_pdl : Optional[bool]
        Accepted for compatibility; no effect.

    Returns
    -------
    torch.Tensor
        shape and dtype of ``input`` (``out`` when given).
    """
    return _rmsnorm_common(input, weight, eps, out, 0.0)


def gemma_rmsnorm(
    input: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    out: Optional[torch.Tensor] = None,
    enable_pdl: Optional[bool] = None,
) -> torch.Tensor:
    r"""Gemma-style RMS normalization: ``out[i] = input[i] / sqrt(mean(input[i]^2) + eps) * (weight + 1)``.

    Parameters
    ----------
    input : torch.Tensor
        shape: ``[batch_size, hidden_size]`` or ``[batch_size, num_heads, hidden_size]``,
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``torch.float32``; last dimension contiguous.
    weight : torch.Tensor
        shape: ``[hidden_size]``, contiguous, dtype: same as ``input``.
    eps : float
        Added to the mean square, default ``1e-6``.
    out : Optional[torch.Tensor]
        Written in place if given: same shape and dtype as ``input``.
    enable_pdl : Optional[bool]
        Accepted for compatibility; no effect.

    Returns
    -------
    torch.Tensor
        shape and dtype of ``input`` (``out`` when given).
    """
    return _rmsnorm_common(input, weight, eps, out, 1.0)


def fused_add_rmsnorm(
    input: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    enable_pdl: Optional[bool] = None,
) -> None:
    r"""Fused residual add and RMS normalization, in place.

    Step 1: ``residual[i] += input[i]`` (stored in ``residual``'s dtype).
    Step 2: ``input[i] = x / sqrt(mean(x^2) + eps) * weight`` where ``x`` is the float32 sum of
    step 1 (before rounding), as in FlashInfer.

    Parameters
    ----------
    input : torch.Tensor
        shape: ``[batch_size, hidden_size]`` (or ``[batch_size, num_heads, hidden_size]``),
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``torch.float32``; overwritten with the output.
    residual : torch.Tensor
        same shape and dtype as ``input``; overwritten with ``residual + input``.
    weight : torch.Tensor
        shape: ``[hidden_size]``, contiguous, dtype: same as ``input``.
    eps : float
        Added to the mean square, default ``1e-6``.
    enable_pdl : Optional[bool]
        Accepted for compatibility; no effect.
    """
    _fused_add_common(input, residual, weight, eps, 0.0)


def gemma_fused_add_rmsnorm(
    input: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float = 1e-6,
    enable_pdl: Optional[bool] = None,
) -> None:
    r"""Gemma-style fused residual add and RMS normalization, in place.

    Step 1: ``residual[i] += input[i]``.
    Step 2: ``input[i] = x / sqrt(mean(x^2) + eps) * (weight + 1)`` with ``x`` the float32 sum.

    Parameters
    ----------
    input : torch.Tensor
        shape: ``[batch_size, hidden_size]`` (or ``[batch_size, num_heads, hidden_size]``),
        dtype: ``torch.float16``, ``torch.bfloat16`` or ``torch.float32``; overwritten with the output.
    residual : torch.Tensor
        same shape and dtype as ``input``; overwritten with ``residual + input``.
    weight : torch.Tensor
        shape: ``[hidden_size]``, contiguous, dtype: same as ``input``.
    eps : float
        Added to the mean square, default ``1e-6``.
    enable_pdl : Optional[bool]
        Accepted for compatibility; no effect.
    """
    _fused_add_common(input, residual, weight, eps, 1.0)


def layernorm(
    input: torch.Tensor,
    gemma: torch.Tensor,
    beta: torch.Tensor,
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""Layer normalization: ``out[i] = (input[i] - mean) / sqrt(var + eps) * gemma + beta``
    (biased variance over the hidden dimension, float32 math).

    Parameters
    ----------
    input : torch.Tensor
        shape: ``[batch_size, hidden_size]`` (or ``[batch_size, num_heads, hidden_size]``),
        dtype: ``torch.bfloat16`` (as FlashInfer), also ``torch.float16`` or ``torch.float32``.
    gemma : torch.Tensor
        The scale, shape: ``[hidden_size]``, dtype: ``torch.float32``.
    beta : torch.Tensor
        The shift, shape: ``[hidden_size]``, dtype: ``torch.float32``.
    eps : float
        Added to the variance, default ``1e-6``.

    Returns
    -------
    torch.Tensor
        shape and dtype of ``input``, contiguous.
    """
    _check_rows("input", input)
    hidden = input.shape[-1]
    _check_vector("gemma", gemma, hidden, input.device, (torch.float32,))
    _check_vector("beta", beta, hidden, input.device, (torch.float32,))
    eps = _check_eps(eps)
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    if torch.compiler.is_compiling():
        _layernorm_op(out, input, gemma, beta, eps)
    else:
        _launch_layernorm(out, input, gemma, beta, eps)
    return out
