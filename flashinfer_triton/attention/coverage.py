"""The AOT tier's covering set: every kernel configuration the attention launchers can pick, for
every value of every axis the API accepts, compiled ahead of time for each target.

The whole product of the API's axes (dtypes x head dims x group sizes x batch shapes x options) is
millions of configurations, so the tier compiles a **pairwise covering**: every pair of values of
two axes that some launchable configuration has appears together in at least one compiled
configuration. Axes are the configuration's own fields (block shape, head dims, dtypes, flags), so
a shape that only a float32 problem picks is paired with float32 only, and so on.
``launchable_pairs`` computes the reachable pairs exactly from the config tables; ``covering``
builds the set greedily; ``tests/test_coverage.py`` checks that every configuration a launcher can
produce has all its pairs covered, and that the set is exactly what the AOT test compiles.
"""

from __future__ import annotations

import functools
import itertools
from typing import Dict, List, Tuple

import torch

from ..kernels import AotConfig
from ..kernels.attention.kernel import attention_kernel
from .config import TABLE_TARGETS, TABLES, group_constexpr, select_config
from .device import DeviceInfo
from .launcher import kernel_constexprs
from .options import HEAD_DIM_QK_VO, KV_DTYPES, O_DTYPES, Q_DTYPES, make_options
from .signature import aot_signature

# Batch shapes that reach every rule of the tables: (max_qo_len, total rows).
BATCH_SHAPES = ((1, 1), (8, 8), (512, 1 << 20), (1024, 1024), (2048, 1 << 20), (16384, 16384), (1 << 20, 1 << 20))
GROUPS = (1, 2, 3, 4, 6, 8, 16, 32, 64, 128)  # 3 and 6: small groups passed at run time
# Axes: the fields of a launchable configuration. "shape" is the block shape and launch options.
AXES = ("shape", "group_c", "head_dim", "head_dim_vo", "q", "kv", "o", "paged", "causal", "window", "soft_cap",
        "pos_enc", "custom_mask", "sinks", "write_lse")
# A group the kernel takes at run time (GROUP_C 0), for the compiled rows that need one.
RUNTIME_GROUP = 3
# Options the tables and the kernel treat independently of everything else.
FREE_AXES = {"o": O_DTYPES, "paged": (False, True), "window": (False, True), "soft_cap": (False, True),
             "sinks": (False, True), "write_lse": (False, True)}


BACKENDS = ("cuda", "hip")


def backend_of(family: str) -> str:
    return "hip" if TABLE_TARGETS[family][0].startswith("gfx") else "cuda"


def _devices(backend: str) -> List[DeviceInfo]:
    """One modelled device per distinct table of a backend (the configuration depends only on the
    table); each backend's tables compile for that backend's targets (``config.TABLE_TARGETS``)."""
    distinct = {}
    for family, table in TABLES.items():
        if backend_of(family) == backend:
            distinct.setdefault(repr({**table.__dict__, "source": None}), family)
    arch = "gfx942" if backend == "hip" else "90"
    return [DeviceInfo(family, family, backend, arch, 132, 232448, 32) for family in distinct.values()]


def _shape(cfg) -> Tuple:
    return cfg.launch_key


@functools.lru_cache(maxsize=None)
def coupled_configs(backend: str) -> Tuple[Dict[str, object], ...]:
    """Every combination of the coupled axes (those the block shape depends on, or that constrain
    each other) a launcher can produce, over every table: the free axes at their defaults."""
    out = {}
    dtypes = [(q, kv) for q in Q_DTYPES for kv in KV_DTYPES if (q == torch.float32) == (kv == torch.float32)]
    for (q, kv), (hd, hd_vo), group, (max_qo, rows), mask, pos_enc, causal in itertools.product(
            dtypes, HEAD_DIM_QK_VO, GROUPS, BATCH_SHAPES, (False, True), (0, 1, 2), (False, True)):
        opts = make_options(num_qo_heads=group, num_kv_heads=1, head_dim=hd, head_dim_vo=hd_vo, q_data_type=q,
                            kv_data_type=kv, paged=True, causal=causal, custom_mask=mask,
                            pos_encoding_mode=("NONE", "ROPE_LLAMA", "ALIBI")[pos_enc])
        for device in _devices(backend):
            try:
                cfg = select_config(opts, device, max_qo, rows, 16)
            except NotImplementedError:  # a combination the launchers refuse
                continue
            row = dict(shape=_shape(cfg), group_c=group_constexpr(group), head_dim=hd, head_dim_vo=hd_vo, q=q, kv=kv,
                       causal=opts.causal, pos_enc=pos_enc, custom_mask=mask)
            out[tuple(row.values())] = row
    return tuple(out.values())


def _key(pair):
    return tuple(sorted(pair, key=lambda av: AXES.index(av[0])))


def _pairs(row: Dict[str, object]):
    return {_key(p) for p in itertools.combinations([(axis, row[axis]) for axis in AXES], 2)}


@functools.lru_cache(maxsize=None)
def launchable_pairs(backend: str) -> frozenset:
    """Every pair of axis values some launchable configuration has: pairs among the coupled axes
    as the tables produce them, and every value of a free axis with every other axis value."""
    pairs = set()
    coupled_axes = [a for a in AXES if a not in FREE_AXES]
    values = set()
    for row in coupled_configs(backend):
        vals = [(a, row[a]) for a in coupled_axes]
        values.update(vals)
        pairs.update(_key(p) for p in itertools.combinations(vals, 2))
    free_values = [(a, v) for a, domain in FREE_AXES.items() for v in domain]
    for fv in free_values:
        pairs.update(_key((fv, other)) for other in values)
        pairs.update(_key((fv, other)) for other in free_values if other[0] != fv[0])
    return frozenset(pairs)


@functools.lru_cache(maxsize=None)
def covering(backend: str) -> Tuple[Dict[str, object], ...]:
    """A greedy pairwise covering of ``launchable_pairs``: each new configuration is the coupled
    combination (plus the free values) that covers the most still-uncovered pairs. Pairs are bits
    of Python ints, so a step scores every candidate with one AND and a popcount."""
    index = {p: i for i, p in enumerate(sorted(launchable_pairs(backend), key=repr))}
    coupled_axes = [a for a in AXES if a not in FREE_AXES]

    def mask(pairs):
        m = 0
        for p in pairs:
            m |= 1 << index[p]
        return m

    candidates = [(row, mask(_key(p) for p in itertools.combinations([(a, row[a]) for a in coupled_axes], 2)))
                  for row in coupled_configs(backend)]
    uncovered = (1 << len(index)) - 1
    rows = []
    while uncovered:
        ranked = sorted(candidates, key=lambda c: -(c[1] & uncovered).bit_count())[:32]
        best, best_mask = None, 0
        for base, _ in ranked:
            row = dict(base)
            for axis, domain in FREE_AXES.items():  # each free axis takes the value that covers most
                fixed = [(a, row[a]) for a in row if a != axis]
                row[axis] = max(domain, key=lambda val: (mask(_key(((axis, val), av)) for av in fixed)
                                                         & uncovered).bit_count())
            m = mask(_pairs(row))
            if best is None or (m & uncovered).bit_count() > (best_mask & uncovered).bit_count():
                best, best_mask = row, m
        uncovered &= ~best_mask
        rows.append(best)
    return tuple(rows)


def config_name(row: Dict[str, object], backend: str = "cuda") -> str:
    bm, bn, w, s, mm, mc, prec = row["shape"]
    flags = "".join(c for c, k in (("P", "paged"), ("C", "causal"), ("W", "window"), ("S", "soft_cap"),
                                   ("M", "custom_mask"), ("K", "sinks"), ("L", "write_lse")) if row[k])
    dt = "_".join(str(row[k]).replace("torch.", "").replace("float", "f") for k in ("q", "kv", "o"))
    return (f"attn_{backend}_{bm}x{bn}w{w}s{s}m{mm}_g{row['group_c']}_d{row['head_dim']}v{row['head_dim_vo']}_{dt}"
            f"_pe{row['pos_enc']}_{flags}")


def aot_config(row: Dict[str, object], backend: str = "cuda") -> AotConfig:
    """The compiled form of one covering row, for its backend's targets."""
    bm, bn, warps, stages, merge_m, merge_c, precision = row["shape"]
    opts = make_options(num_qo_heads=row["group_c"] or RUNTIME_GROUP, num_kv_heads=1, head_dim=row["head_dim"],
                        head_dim_vo=row["head_dim_vo"],
                        q_data_type=row["q"], kv_data_type=row["kv"], o_data_type=row["o"], paged=row["paged"],
                        causal=row["causal"], custom_mask=row["custom_mask"],
                        pos_encoding_mode=("NONE", "ROPE_LLAMA", "ALIBI")[row["pos_enc"]],
                        logits_soft_cap=30.0 if row["soft_cap"] else None)
    from .config import KernelConfig

    cfg = KernelConfig(bm, bn, warps, stages, merge_m, merge_c, precision, False)
    cx = kernel_constexprs(opts, cfg, row["window"], row["write_lse"], row["sinks"])
    targets = ("gfx942", "gfx950") if backend == "hip" else ("cuda90", "cuda80")
    return AotConfig(attention_kernel, aot_signature(row["q"], row["kv"], row["o"]), cx, warps, stages,
                     config_name(row, backend), targets=targets)


def variant_aot_config(variant, param_dtypes=(), *, head_dim: int = 128, dtype=torch.bfloat16, paged: bool = True,
                       causal: bool = True, group: int = 4, qo_len: int = 8192, page_size: int = 16) -> AotConfig:
    """The attention kernel with a user variant's hooks at one problem shape (default: bf16 causal
    paged prefill of 8192 query rows, D 128, GQA 4, on the Hopper table): what a variant's first call
    compiles, for the AOT tier and for measuring its compile time. ``param_dtypes``: the dtypes of the
    variant's tensors, in order."""
    opts = make_options(num_qo_heads=group, num_kv_heads=1, head_dim=head_dim, q_data_type=dtype, paged=paged,
                        causal=causal, variant=variant)
    cfg = select_config(opts, DeviceInfo("h200", "h200", "cuda", "90", 132, 232448, 32), qo_len, qo_len, page_size)
    cx = kernel_constexprs(opts, cfg, False, False, False)
    dt = str(dtype).replace("torch.", "").replace("float", "f")
    return AotConfig(attention_kernel, aot_signature(dtype, dtype, dtype, param_dtypes), cx, cfg.num_warps,
                     cfg.num_stages, f"attn_variant_{variant.name}_{cfg.block_m}x{cfg.block_n}_d{head_dim}_{dt}")


def attention_aot_configs() -> List[AotConfig]:
    from ..kernels.attention import merge as km

    configs = [aot_config(row, backend) for backend in BACKENDS for row in covering(backend)]
    for dtype in ("*fp16", "*bf16", "*fp32"):
        for block_d in km.BLOCK_DS:
            block_h = max(1, km.TILE // block_d)
            for has_mask in (False, True):
                sig = {"p_va": dtype, "p_sa": "*fp32", "p_vb": dtype, "p_sb": "*fp32", "p_vo": dtype, "p_so": "*fp32",
                       "p_mask": "*u8"}
                for name in ("num_heads", "head_dim", "s_va_n", "s_va_h", "s_sa_n", "s_sa_h", "s_vb_n", "s_vb_h",
                             "s_sb_n", "s_sb_h", "s_vo_n", "s_vo_h", "s_so_n", "s_so_h"):
                    sig[name] = "i32"
                sig.update(HAS_MASK="constexpr", BLOCK_H="constexpr", BLOCK_D="constexpr")
                configs.append(AotConfig(km.merge_state_kernel, sig,
                                         {"HAS_MASK": has_mask, "BLOCK_H": block_h, "BLOCK_D": block_d},
                                         km.NUM_WARPS, 2, f"merge_state_{dtype[1:]}_d{block_d}{'_mask' * has_mask}"))
            sig = {"p_v": dtype, "p_s": "*fp32", "p_vo": dtype, "p_so": "*fp32"}
            for name in ("num_states", "num_heads", "head_dim", "s_v_n", "s_v_k", "s_v_h", "s_s_n", "s_s_k", "s_s_h",
                         "s_vo_n", "s_vo_h", "s_so_n", "s_so_h"):
                sig[name] = "i32"
            sig.update(BLOCK_H="constexpr", BLOCK_D="constexpr")
            configs.append(AotConfig(km.merge_states_kernel, sig, {"BLOCK_H": block_h, "BLOCK_D": block_d},
                                     km.NUM_WARPS, 2, f"merge_states_{dtype[1:]}_d{block_d}"))
    return configs


def row_of(launcher, q_dtype, kv_dtype, o_dtype, has_window: bool, write_lse: bool, has_sinks: bool) -> Dict[str, object]:
    """The covering row of the configuration ``launcher`` launches with these per-call choices."""
    cx = launcher.constexprs(has_window, write_lse, has_sinks)
    cfg = launcher.cfg
    return dict(shape=(cx["BLOCK_M"], cx["BLOCK_N"], cfg.num_warps, cfg.num_stages, cx["MERGE_M"],
                       cx["MERGE_BLOCK_C"], cx["DOT_PRECISION"]),
                group_c=cx["GROUP_C"], head_dim=cx["HEAD_DIM"], head_dim_vo=cx["HEAD_DIM_VO"], q=q_dtype, kv=kv_dtype, o=o_dtype,
                paged=cx["PAGED"], causal=cx["CAUSAL"], window=cx["HAS_WINDOW"], soft_cap=cx["SOFT_CAP"],
                pos_enc=cx["POS_ENC"], custom_mask=cx["CUSTOM_MASK"], sinks=cx["HAS_SINKS"], write_lse=cx["WRITE_LSE"])


@functools.lru_cache(maxsize=None)
def covered_pairs(backend: str) -> frozenset:
    covered = set()
    for r in covering(backend):
        covered |= _pairs(r)
    return frozenset(covered)


def uncovered_pairs(row: Dict[str, object], backend: str = "cuda") -> set:
    """Pairs of ``row`` that no configuration compiled for ``backend`` has (empty when covered)."""
    return _pairs(row) - covered_pairs(backend)
