"""MLA on the shared engine: options, work list, launcher, AOT list and torch.library op of ``mla_kernel``.

``plan_mla`` is the MLA counterpart of ``plan_attention``: the device's configuration
(``config.select_mla_config``, tables in ``config.MLA_TABLES``), the scheduler's work list
(``plan_work``: query rows tiled ``tile_q`` tokens at a time, the head groups of a request standing
where the attention kernel's KV heads stand), the one metadata upload, the workspace's partials,
CUDA-graph bounds; it returns an ``MLALauncher``, which launches ``mla_kernel`` and, when a request
is split, ``mla_merge_kernel``. The kernels (``kernels/mla.py``) and this module share one
declaration of each kernel's arguments (``MLA``, ``MLA_MERGE``: ``KernelSignature``).

Heads map onto tiles of ``BLOCK_M`` rows: ``group = min(num_heads, BLOCK_M)`` heads per tile and
``tile_q = BLOCK_M // group`` query tokens; ``head_groups = ceil(num_heads / group)`` programs per
work item (128 heads at BLOCK_M 64: two programs per item, one token each; 16 heads: one program
per item, 4 tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .._launch import launch
from .._utils import LOG2E, canonicalize_dtype
from ..kernels import AotConfig
from ..kernels.mla import ARG_TYPES, MERGE_ARG_TYPES, MERGE_PER_CALL_ARGS, PER_CALL_ARGS, mla_kernel, \
    mla_merge_kernel
from .config import MLA_TABLES, KernelConfig, mla_table_for, select_mla_config
from .device import DeviceInfo, device_info
from .launcher import dummy
from .plan import GraphBounds
from .scheduler import META_FIELDS, DeviceMetadata, WorkPlan, max_grid, plan_work
from .signature import KernelSignature
from .workspace import Workspace

MLA = KernelSignature(mla_kernel, ARG_TYPES, PER_CALL_ARGS)
MLA_MERGE = KernelSignature(mla_merge_kernel, MERGE_ARG_TYPES, MERGE_PER_CALL_ARGS)
for _sig in (MLA, MLA_MERGE):
    if not set(_sig.meta_fields) <= set(META_FIELDS):
        raise ImportError(f"{_sig.kernel.fn.__name__} reads work-list fields the scheduler does not make: "
                          f"{sorted(set(_sig.meta_fields) - set(META_FIELDS))}")

# The merge kernel's launch: BLOCK_H heads of one query a program, BLOCK_C chunks of [BLOCK_H, 512]
# float32 partials per load (4K elements for 4 warps). Defaults, not yet swept.
MERGE_BLOCK_H, MERGE_CHUNKS, MERGE_WARPS = 2, 4, 4

HEAD_DIM_CKV = 512
HEAD_DIM_KPE = 64
# q dtype -> the KV dtypes it runs with (float32: an extension over FlashInfer, for exact references).
MLA_DTYPES: Dict[torch.dtype, Tuple[torch.dtype, ...]] = {
    torch.float16: (torch.float16, torch.float8_e4m3fn),
    torch.bfloat16: (torch.bfloat16, torch.float8_e4m3fn),
    torch.float32: (torch.float32,),
}


@dataclass(frozen=True)
class MLAOptions:
    num_heads: int
    head_dim_ckv: int
    head_dim_kpe: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    causal: bool
    sm_scale: float


def make_mla_options(num_heads, head_dim_ckv, head_dim_kpe, causal, sm_scale, q_data_type,
                     kv_data_type) -> MLAOptions:
    """Validate FlashInfer's MLA plan() options (clear errors naming the argument)."""
    for name, value in (("num_heads", num_heads), ("head_dim_ckv", head_dim_ckv), ("head_dim_kpe", head_dim_kpe)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if num_heads < 1:
        raise ValueError(f"num_heads: expected a positive int, got {num_heads}")
    if (head_dim_ckv, head_dim_kpe) != (HEAD_DIM_CKV, HEAD_DIM_KPE):
        raise NotImplementedError(f"head_dim_ckv={head_dim_ckv}, head_dim_kpe={head_dim_kpe}: the MLA kernel is built "
                                  f"for DeepSeek's {HEAD_DIM_CKV} + {HEAD_DIM_KPE} (as FlashInfer's)")
    if sm_scale is None or isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float)) \
            or not math.isfinite(sm_scale):
        raise ValueError(f"sm_scale: expected a finite float (FlashInfer's MLA has no default), got {sm_scale!r}")
    q_dtype = canonicalize_dtype(q_data_type, "q_data_type")
    kv_dtype = canonicalize_dtype(kv_data_type, "kv_data_type") or q_dtype
    if q_dtype not in MLA_DTYPES:
        raise TypeError(f"q_data_type: expected float16 or bfloat16 (float32 as an extension), got {q_dtype}")
    if kv_dtype not in MLA_DTYPES[q_dtype]:
        names = [str(d).replace("torch.", "") for d in MLA_DTYPES[q_dtype]]
        if kv_dtype == torch.float8_e5m2:
            raise NotImplementedError("kv_data_type=float8_e5m2: a float8 MLA cache is float8_e4m3fn (as FlashInfer's)")
        raise TypeError(f"kv_data_type: expected one of {names} with q_data_type {q_dtype}, got {kv_dtype}")
    return MLAOptions(int(num_heads), int(head_dim_ckv), int(head_dim_kpe), q_dtype, kv_dtype, bool(causal),
                      float(sm_scale))


def head_tiling(num_heads: int, block_m: int) -> Tuple[int, int, int]:
    """(heads per tile, head groups, query tokens per tile) for ``BLOCK_M``-row tiles."""
    group = min(num_heads, block_m)
    return group, -(-num_heads // group), block_m // group


def mla_graph_bounds(opts: MLAOptions, cfg: KernelConfig, device: torch.device, batch: int,
                     max_rows: int) -> GraphBounds:
    """Bounds for a CUDA-graph wrapper serving ``batch`` requests and at most ``max_rows`` query tokens."""
    info = device_info(device)
    _, head_groups, tile_q = head_tiling(opts.num_heads, cfg.block_m)
    max_tiles = -(-max_rows // tile_q) + batch
    items = max_grid(batch, max_tiles, head_groups, info.compute_units, mla_table_for(info).split, opts.causal)
    # ``counters``: here the length of the split-tile list the merge kernel's grid is sized for.
    return GraphBounds(items, items * min(tile_q, max(max_rows, 1)), max_tiles)


def mla_constexprs(cfg: KernelConfig) -> Dict[str, object]:
    """The kernel's constexprs, in its signature order."""
    values = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, HEAD_DIM_CKV=HEAD_DIM_CKV, HEAD_DIM_KPE=HEAD_DIM_KPE,
                  DOT_PRECISION=cfg.dot_precision)
    return {name: values[name] for name in MLA.constexpr_args}


MERGE_CONSTEXPRS = dict(HEAD_DIM_CKV=HEAD_DIM_CKV, BLOCK_H=MERGE_BLOCK_H, BLOCK_C=MERGE_CHUNKS)
# Where each of the merge kernel's per-call arguments stands in the main kernel's per-call group.
_MERGE_FROM_CALL = tuple(MLA.per_call_args.index(name) for name in MLA_MERGE.per_call_args)


class MLALauncher:
    """The launches of one MLA plan: the plan-time argument groups, the grids and the constexprs are
    fixed here; run() adds the tensors, strides and scales (``MLA.per_call_args``). ``merge_tiles``
    is the length of the plan's split-tile list (``meta["merge_item"]``): 0 when no request is
    split; a CUDA-graph wrapper's fixed bound otherwise."""

    def __init__(self, opts: MLAOptions, cfg: KernelConfig, plan: WorkPlan, meta: Dict[str, torch.Tensor],
                 kv_indices: torch.Tensor, part_o: torch.Tensor, part_lse: torch.Tensor, page_size: int,
                 merge_tiles: int):
        group, head_groups, tile_q = head_tiling(opts.num_heads, cfg.block_m)
        values = dict(part_o_ptr=part_o, part_lse_ptr=part_lse, kv_indices_ptr=kv_indices,
                      num_heads=opts.num_heads, head_groups=head_groups, group=group, page_size=page_size,
                      causal=int(opts.causal), tile_q=tile_q)
        values.update({f"{name}_ptr": meta[name] for name in meta})
        self.opts, self.cfg, self.plan = opts, cfg, plan
        self.plan_args = tuple(values[name] for name in MLA.plan_args)
        self.merge_plan_args = tuple(values[name] for name in MLA_MERGE.plan_args)
        self.grid = (plan.grid_items * head_groups, 1, 1)
        self.merge_grid = (merge_tiles, -(-opts.num_heads // MERGE_BLOCK_H), 1)
        self.constexprs = mla_constexprs(cfg)
        self.launch_id = register_launch(cfg)
        self.f32_dummy = dummy(part_o.device, torch.float32)
        # Everything fixed for this plan, folded into one hash: the workspace views and metadata
        # fields are 16-byte aligned by construction; the caller's page ids are checked.
        self.static_key = hash((id(mla_kernel), cfg.launch_key, opts, kv_indices.data_ptr() & 15 == 0))
        self.merge_static_key = hash((id(mla_merge_kernel), opts))

    def call_args(self, q_nope, q_pe, ckv, kpe, out, lse, ckv_scale: float, kpe_scale: float, lse_scale: float):
        """The per-call argument group (``MLA.per_call_args`` order)."""
        write_lse = lse is not None
        return (q_nope, q_pe, ckv, kpe, out, lse if write_lse else self.f32_dummy,
                q_nope.stride(0), q_nope.stride(1), q_pe.stride(0), q_pe.stride(1), ckv.stride(0), ckv.stride(1),
                kpe.stride(0), kpe.stride(1), out.stride(0), out.stride(1),
                self.opts.sm_scale * ckv_scale * LOG2E, kpe_scale / ckv_scale, ckv_scale, lse_scale, int(write_lse))

    @staticmethod
    def merge_call_args(args):
        """The merge kernel's per-call group, taken from the main kernel's (``call_args``)."""
        return tuple(args[i] for i in _MERGE_FROM_CALL)

    def __call__(self, q_nope, q_pe, ckv, kpe, out, lse=None, ckv_scale: float = 1.0, kpe_scale: float = 1.0,
                 lse_scale: float = 1.0) -> None:
        """q_nope [N, H, 512], q_pe [N, H, 64], ckv [pages, page_size, 512], kpe [pages, page_size, 64];
        out [N, H, 512]; lse [N, H] float32 (base 2 times ``lse_scale``) or None."""
        if self.grid[0] == 0:
            return
        args = self.call_args(q_nope, q_pe, ckv, kpe, out, lse, ckv_scale, kpe_scale, lse_scale)
        # Pointer dtypes and alignments, and the strides' values, are what Triton specializes on.
        key = (self.static_key, args[6:16], q_nope.dtype, ckv.dtype, tuple(t.data_ptr() & 15 == 0 for t in args[:6]))
        launch(mla_kernel, self.grid, args + self.plan_args, self.constexprs, self.cfg.num_warps, self.cfg.num_stages,
               key, prehashed=True)
        if self.merge_grid[0]:
            merge_args = self.merge_call_args(args)
            key = (self.merge_static_key, merge_args[2:4], out.dtype, out.data_ptr() & 15 == 0)
            launch(mla_merge_kernel, self.merge_grid, merge_args + self.merge_plan_args, MERGE_CONSTEXPRS,
                   MERGE_WARPS, 1, key, prehashed=True)


def plan_mla(opts: MLAOptions, workspace: Workspace, meta: DeviceMetadata, qo_indptr: np.ndarray, kv_len: np.ndarray,
             kv_begin: np.ndarray, kv_indices: torch.Tensor, page_size: int, *, cfg: Optional[KernelConfig] = None,
             disable_split_kv: bool = False, fixed_split_tokens: Optional[int] = None,
             bounds: Optional[GraphBounds] = None, non_blocking: bool = True) -> MLALauncher:
    """Plan one MLA batch. ``qo_indptr`` [B+1], ``kv_len`` [B] (tokens), ``kv_begin`` [B] (first
    page-table entry of each request) int64 host arrays; ``kv_indices`` the int32 page ids on the
    device. ``fixed_split_tokens`` cuts every request's KV in chunks of that many tokens (rounded up
    to BLOCK_N); ``bounds`` are a CUDA-graph wrapper's fixed sizes."""
    device = workspace.device
    info = device_info(device)
    if cfg is None:
        cfg = select_mla_config(opts.q_dtype, opts.kv_dtype, info)
    _, head_groups, tile_q = head_tiling(opts.num_heads, cfg.block_m)
    policy = mla_table_for(info).split
    row_capacity = workspace.partial_capacity // (4 * opts.num_heads * (opts.head_dim_ckv + 1))

    def schedule(no_split: bool) -> WorkPlan:
        return plan_work(qo_indptr, kv_len, kv_begin, tile_q, cfg.block_n, head_groups, info.compute_units,
                         opts.causal, policy, disable_split_kv=no_split,
                         fixed_split_size=None if no_split else fixed_split_tokens,
                         pad_items=None if bounds is None else bounds.items)

    plan = schedule(disable_split_kv)
    rows_cap = row_capacity if bounds is None else min(row_capacity, bounds.partial_rows)
    rows = plan.num_partial_rows if bounds is None else bounds.partial_rows
    if plan.num_partial_rows > rows_cap:
        if fixed_split_tokens is not None:
            raise ValueError(f"float_workspace_buffer: the fixed split size needs {plan.num_partial_rows} partial "
                             f"rows, more than the buffer holds ({rows_cap}); pass a larger buffer or a larger split")
        plan = schedule(True)  # not enough workspace for partials: one chunk per request
        if bounds is None:
            rows = 0
    part_o, part_lse = workspace.partials(rows, opts.num_heads, opts.head_dim_ckv)
    plan = with_merge_items(plan, None if bounds is None else bounds.counters)
    views = meta.upload(plan, non_blocking=non_blocking)
    return MLALauncher(opts, cfg, plan, views, kv_indices, part_o, part_lse, page_size,
                       plan.offsets["merge_item"][1])


def with_merge_items(plan: WorkPlan, length: Optional[int] = None) -> WorkPlan:
    """The plan with one more packed field, ``merge_item``: the first chunk's item of every split
    tile (what ``mla_merge_kernel`` runs over), padded with -1 to ``length`` (a CUDA-graph bound)."""
    field = lambda name: plan.host[plan.offsets[name][0]: plan.offsets[name][0] + plan.num_items]  # noqa: E731
    first = np.flatnonzero((field("item_req") >= 0) & (field("item_part_base") >= 0) & (field("item_chunk") == 0))
    length = len(first) if length is None else length
    if len(first) > length:
        raise ValueError(f"plan: {len(first)} split tiles, more than the CUDA-graph bound of {length}")
    items = np.full(length, -1, dtype=np.int32)
    items[: len(first)] = first
    offsets = dict(plan.offsets, merge_item=(plan.host.shape[0], length))
    return replace(plan, host=np.concatenate([plan.host, items]), offsets=offsets)


# ---- torch.library op (torch.compile): the MLA counterpart of ``ops.attention_op`` ----

# Every config an MLA launcher was built for, by id (registered eagerly at plan(), never while
# torch.compile traces): the op names its constexprs and launch options by this id.
MLA_LAUNCH_CONFIGS: List[KernelConfig] = []
_MLA_LAUNCH_IDS: Dict[KernelConfig, int] = {}
_WRITTEN = ("o_ptr", "lse_ptr", "part_o_ptr", "part_lse_ptr")
_KINDS = MLA.op_kinds(MLA.runtime_args)
_MERGE_ONLY = tuple(n for n in MLA_MERGE.runtime_args if n not in MLA.runtime_args)  # work-list fields, tile_q


def register_launch(cfg: KernelConfig) -> int:
    index = _MLA_LAUNCH_IDS.get(cfg)
    if index is None:
        index = _MLA_LAUNCH_IDS[cfg] = len(MLA_LAUNCH_CONFIGS)
        MLA_LAUNCH_CONFIGS.append(cfg)
    return index


# Only out and lse are declared written. The workspace's float32 partials (a view of its uint8
# buffer) are scratch, written and read within the call: declared mutated, Inductor functionalizes
# them into as_strided copies that read past the view (an illegal memory access on the H200).
@torch.library.custom_op("flashinfer_triton::mla", mutates_args=("out", "lse"))
def mla_op(out: torch.Tensor, lse: torch.Tensor, part_o: torch.Tensor, part_lse: torch.Tensor,
           inputs: List[torch.Tensor], ints: List[int], floats: List[float], merge_inputs: List[torch.Tensor],
           merge_ints: List[int], grid: List[int], merge_grid: List[int], launch_id: int) -> None:
    written = dict(zip(_WRITTEN, (out, lse, part_o, part_lse)))
    it_t, it_i, it_f = iter(inputs), iter(ints), iter(floats)
    args = [written[name] if name in written else next(it_t) if kind == "tensor" else next(it_i) if kind == "int"
            else next(it_f) for name, kind in zip(MLA.runtime_args, _KINDS)]
    cfg = MLA_LAUNCH_CONFIGS[launch_id]
    mla_kernel[tuple(grid)](*args, **mla_constexprs(cfg), num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if merge_grid[0]:
        named = dict(zip(MLA.runtime_args, args))
        it_t, it_i = iter(merge_inputs), iter(merge_ints)
        named.update({name: next(it_t) if kind == "tensor" else next(it_i)
                      for name, kind in zip(_MERGE_ONLY, MLA_MERGE.op_kinds(_MERGE_ONLY))})
        mla_merge_kernel[tuple(merge_grid)](*(named[name] for name in MLA_MERGE.runtime_args), **MERGE_CONSTEXPRS,
                                            num_warps=MERGE_WARPS, num_stages=1)


@mla_op.register_fake
def _(out, lse, part_o, part_lse, inputs, ints, floats, merge_inputs, merge_ints, grid, merge_grid, launch_id) -> None:
    return None


def run_mla(launcher: MLALauncher, q_nope, q_pe, ckv, kpe, out, lse=None, ckv_scale: float = 1.0,
            kpe_scale: float = 1.0, lse_scale: float = 1.0) -> None:
    """Dispatch: the registered op while torch.compile traces, the direct launcher otherwise."""
    if not torch.compiler.is_compiling():
        launcher(q_nope, q_pe, ckv, kpe, out, lse, ckv_scale, kpe_scale, lse_scale)
        return
    if launcher.grid[0] == 0:
        return
    args = launcher.call_args(q_nope, q_pe, ckv, kpe, out, lse, ckv_scale, kpe_scale, lse_scale)
    values = dict(zip(MLA.runtime_args, args + launcher.plan_args))
    values.update(zip(MLA_MERGE.plan_args, launcher.merge_plan_args))
    inputs, ints, floats = [], [], []
    for name, kind in zip(MLA.runtime_args, _KINDS):
        if name not in _WRITTEN:
            (inputs if kind == "tensor" else ints if kind == "int" else floats).append(values[name])
    merge_inputs = [values[n] for n, k in zip(_MERGE_ONLY, MLA_MERGE.op_kinds(_MERGE_ONLY)) if k == "tensor"]
    merge_ints = [values[n] for n, k in zip(_MERGE_ONLY, MLA_MERGE.op_kinds(_MERGE_ONLY)) if k == "int"]
    mla_op(*(values[n] for n in _WRITTEN), inputs, ints, floats, merge_inputs, merge_ints, list(launcher.grid),
           list(launcher.merge_grid), launcher.launch_id)


# ---- the AOT list: every table's shape for every dtype pair it runs ----

def _modelled_device(family: str) -> DeviceInfo:
    backend, arch = ("hip", "gfx942") if family == "cdna" else ("cuda", "90")
    return DeviceInfo(family, family, backend, arch, 132, 232448, 32)


def mla_launchable() -> List[Tuple[KernelConfig, torch.dtype, torch.dtype, str]]:
    """Every (configuration, q dtype, kv dtype, backend) the MLA launcher can pick on any device table."""
    out = {}
    for family in MLA_TABLES:
        info = _modelled_device(family)
        for q_dtype, kv_dtypes in MLA_DTYPES.items():
            for kv_dtype in kv_dtypes:
                cfg = select_mla_config(q_dtype, kv_dtype, info)
                out[(cfg.launch_key, cfg.num_warps, q_dtype, kv_dtype, info.backend)] = (cfg, q_dtype, kv_dtype,
                                                                                         info.backend)
    return list(out.values())


def mla_config_name(cfg: KernelConfig, q_dtype: torch.dtype, kv_dtype: torch.dtype) -> str:
    dt = "_".join(str(d).replace("torch.", "").replace("float", "f") for d in (q_dtype, kv_dtype))
    return f"mla_{cfg.block_m}x{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}_{dt}"


def mla_aot_configs() -> List[AotConfig]:
    """Each backend's table shapes compile for that backend's AOT targets."""
    configs = []
    for cfg, q_dtype, kv_dtype, backend in mla_launchable():
        sig = MLA.aot_signature({"q": q_dtype, "kv": kv_dtype, "o": q_dtype})
        targets = ("gfx942", "gfx950") if backend == "hip" else ("cuda90", "cuda80")
        configs.append(AotConfig(mla_kernel, sig, mla_constexprs(cfg), cfg.num_warps, cfg.num_stages,
                                 mla_config_name(cfg, q_dtype, kv_dtype), targets=targets))
    for o_dtype in MLA_DTYPES:
        dt = str(o_dtype).replace("torch.", "").replace("float", "f")
        configs.append(AotConfig(mla_merge_kernel, MLA_MERGE.aot_signature({"o": o_dtype}), dict(MERGE_CONSTEXPRS),
                                 MERGE_WARPS, 1, f"mla_merge_h{MERGE_BLOCK_H}c{MERGE_CHUNKS}_{dt}"))
    return configs
