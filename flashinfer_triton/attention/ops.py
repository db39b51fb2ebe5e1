"""torch.library registration of the attention kernel for torch.compile, with a fake implementation.

Eager run() calls go straight to ``AttentionLauncher`` (a custom-op boundary costs several
microseconds of host time per call); while ``torch.compile`` traces, the API layer goes through
``launch_through_op`` so that ``fullgraph=True`` traces with no graph break. The op carries the
kernel's runtime arguments as tensors / ints / floats in declaration order (``signature.op_kinds``)
and a launch code naming its (options, config) in the process-wide table that plan() fills eagerly
(content-keyed: a re-plan with the same configuration reuses the code, so it does not retrace).
"""

from __future__ import annotations

import functools
from typing import List, Optional

import torch

from ..kernels.attention.kernel import attention_kernel
from .launcher import LAUNCH_CONFIGS, kernel_constexprs, launch_flags
from .signature import RUNTIME_ARGS, op_kinds
from .variant import launch_errors

# Outputs and workspace the kernel writes: named op arguments (only the outputs declared mutated, below).
_WRITTEN = ("o_ptr", "lse_ptr", "part_o_ptr", "part_lse_ptr", "merge_counter_ptr")
_KINDS = op_kinds(RUNTIME_ARGS)


@functools.lru_cache(maxsize=None)
def _launch(launch: int):
    """(constexprs, warps, stages) of a launch code: ``launch_id * 8 + launch_flags(...)``."""
    opts, cfg = LAUNCH_CONFIGS[launch >> 3]
    cx = kernel_constexprs(opts, cfg, bool(launch & 1), bool(launch & 2), bool(launch & 4))
    return cx, cfg.num_warps, cfg.num_stages


# Only out and lse are declared written. The workspace views (float32 partials, int32 counters over
# the uint8 buffer) are scratch: written and read within the launch, the counters left at zero. Declared
# mutated, Inductor functionalizes them into as_strided copies that read past the views (an illegal
# memory access on the H200).
@torch.library.custom_op("flashinfer_triton::attention", mutates_args=("out", "lse"))
def attention_op(out: torch.Tensor, lse: torch.Tensor, part_o: torch.Tensor, part_lse: torch.Tensor,
                 counters: torch.Tensor, inputs: List[torch.Tensor], ints: List[int], floats: List[float],
                 grid: List[int], launch: int) -> None:
    written = dict(zip(_WRITTEN, (out, lse, part_o, part_lse, counters)))
    it_t, it_i, it_f = iter(inputs), iter(ints), iter(floats)
    args = []
    for name, kind in zip(RUNTIME_ARGS, _KINDS):
        if name in written:
            args.append(written[name])
        elif kind == "tensor":
            args.append(next(it_t))
        elif kind == "int":
            args.append(next(it_i))
        else:
            args.append(next(it_f))
    constexprs, warps, stages = _launch(launch)
    try:
        attention_kernel[tuple(grid)](*args, **constexprs, num_warps=warps, num_stages=stages)
    except Exception as exc:  # a variant's hook that does not compile: name it
        error = launch_errors(LAUNCH_CONFIGS[launch >> 3][0].variant, exc)
        if error is exc:
            raise
        raise error from exc


@attention_op.register_fake
def _(out, lse, part_o, part_lse, counters, inputs, ints, floats, grid, launch) -> None:
    return None


def launch_through_op(launcher, q, kv, out, lse: Optional[torch.Tensor], q_scale: float = 1.0, k_scale: float = 1.0,
                      v_scale: float = 1.0, window_left: Optional[int] = None, sinks=None, params=((), ())) -> None:
    """``launcher(q, kv, out, lse, ...)`` through the registered op (while torch.compile traces)."""
    if launcher.grid[0] == 0:
        return
    args, cx = launcher.call_args(q, kv, out, lse, q_scale, k_scale, v_scale, window_left, sinks, params)
    values = dict(zip(RUNTIME_ARGS, args + launcher.plan_args))
    inputs, ints, floats = [], [], []
    for name, kind in zip(RUNTIME_ARGS, _KINDS):
        if name in _WRITTEN:
            continue
        (inputs if kind == "tensor" else ints if kind == "int" else floats).append(values[name])
    flags = launch_flags(cx["HAS_WINDOW"], cx["WRITE_LSE"], cx["HAS_SINKS"])
    attention_op(*(values[n] for n in _WRITTEN), inputs, ints, floats, list(launcher.grid),
                 launcher.launch_id * 8 + flags)


def run_attention(launcher, q, kv, out, lse=None, q_scale: float = 1.0, k_scale: float = 1.0, v_scale: float = 1.0,
                  window_left: Optional[int] = None, sinks=None, params=((), ())) -> None:
    """Dispatch: the registered op while torch.compile traces, the direct launcher otherwise."""
    if torch.compiler.is_compiling():
        launch_through_op(launcher, q, kv, out, lse, q_scale, k_scale, v_scale, window_left, sinks, params)
    else:
        launcher(q, kv, out, lse, q_scale, k_scale, v_scale, window_left, sinks, params)
