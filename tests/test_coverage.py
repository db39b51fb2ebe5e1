"""The AOT tier covers what the launchers pick (CPU, plan only: no kernel runs).

Plans built through the public wrappers, for every value of every API axis and random mixes of
them, on each modelled device family, must launch configurations whose every pair of axis values
the AOT covering set compiles (``flashinfer_triton/attention/coverage.py``)."""

import itertools
import random

import numpy as np
import pytest
import torch

import flashinfer_triton as flashinfer
from flashinfer_triton.attention import block_sparse, coverage, plan as plan_mod
from flashinfer_triton.attention.device import DeviceInfo
from flashinfer_triton.attention.options import HEAD_DIM_QK_VO, KV_DTYPES, Q_DTYPES
from flashinfer_triton.kernels import all_aot_configs


@pytest.fixture(params=[d.family for b in coverage.BACKENDS for d in coverage._devices(b)])
def family(request, monkeypatch):
    """Plans as on a device of each distinct table (the wrappers read the device through this)."""
    backend = coverage.backend_of(request.param)
    info = DeviceInfo(request.param, request.param, backend, "gfx942" if backend == "hip" else "90", 132, 232448,
                      64 if backend == "hip" else 32)
    monkeypatch.setattr(plan_mod, "device_info", lambda device: info)
    monkeypatch.setattr(block_sparse, "device_info", lambda device: info)
    return request.param


def _i32(x):
    return torch.tensor(x, dtype=torch.int32)


def _ws():
    return torch.empty(1 << 20, dtype=torch.uint8)


def _check(wrapper, q, kv, o, window, lse, sinks, what, family="h200"):
    row = coverage.row_of(wrapper.planned.launcher, q, kv, o, window, lse, sinks)
    missing = coverage.uncovered_pairs(row, coverage.backend_of(family))
    assert not missing, f"{what}: the launcher picks {row}, whose pairs {sorted(missing, key=repr)[:3]} the AOT tier does not compile"


def _decode(hd, group, q, kv, o, opts):
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(_ws())
    w.plan(_i32([0, 2, 5]), _i32(list(range(5))), _i32([16, 3]), 2 * group, 2, hd, 16, q_data_type=q,
           kv_data_type=kv, o_data_type=o, **opts)
    return w


def _prefill(hd, hd_vo, group, q, kv, o, qo_lens, paged, opts):
    qo = _i32(np.concatenate([[0], np.cumsum(qo_lens)]).tolist())
    kv_lens = [max(n, 40) for n in qo_lens]
    if paged:
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_ws())
        pages = [-(-n // 16) for n in kv_lens]
        w.plan(qo, _i32(np.concatenate([[0], np.cumsum(pages)]).tolist()), _i32(list(range(sum(pages)))),
               _i32([n - 16 * (p - 1) for n, p in zip(kv_lens, pages)]), 2 * group, 2, hd, 16, head_dim_vo=hd_vo,
               q_data_type=q, kv_data_type=kv, o_data_type=o, **opts)
    else:
        w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_ws())
        w.plan(qo, _i32(np.concatenate([[0], np.cumsum(kv_lens)]).tolist()), 2 * group, 2, hd, head_dim_vo=hd_vo,
               q_data_type=q, kv_data_type=kv, o_data_type=o, **opts)
    return w


DTYPES = [(q, kv) for q in Q_DTYPES for kv in KV_DTYPES if (q == torch.float32) == (kv == torch.float32)]
OPTION_SETS = [dict(), dict(causal=True), dict(window_left=5), dict(logits_soft_cap=30.0),
               dict(pos_encoding_mode="ROPE_LLAMA"), dict(pos_encoding_mode="ALIBI")]
QO_SHAPES = [[1, 1], [3, 5], [700, 300], [3000, 2000, 4000], [9000]]


def test_every_axis_value(family):
    """Each value of each axis, the others at a default."""
    for (hd, hd_vo), (q, kv), group in itertools.product(HEAD_DIM_QK_VO, DTYPES, (1, 4, 8, 16, 32, 128)):
        if q == torch.float32 and group > 64:
            continue  # refused (NotImplementedError): float32 supports groups up to 64
        if hd == hd_vo:
            _check(_decode(hd, group, q, kv, q, {}), q, kv, q, False, True, False, f"decode d{hd} g{group} {q}/{kv}", family)
        for shape in QO_SHAPES:
            _check(_prefill(hd, hd_vo, group, q, kv, q, shape, True, dict(causal=True)), q, kv, q, False, False, False,
                   f"prefill d{hd}/{hd_vo} g{group} {q}/{kv} {shape}", family)


def test_random_mixes(family):
    """Random combinations of every axis (fixed seed), through decode, paged and ragged prefill."""
    rng = random.Random(1234)
    for _ in range(150):
        hd, hd_vo = rng.choice(HEAD_DIM_QK_VO)
        q, kv = rng.choice(DTYPES)
        o = rng.choice(Q_DTYPES)
        group = rng.choice([1, 2, 3, 4, 6, 8, 16, 32, 64] + ([] if q == torch.float32 else [128]))
        opts = dict(rng.choice(OPTION_SETS))
        window, lse, sinks = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
        kind = rng.choice(["decode", "paged", "ragged"])
        if kind == "decode" and hd == hd_vo and "causal" not in opts:
            w = _decode(hd, group, q, kv, o, opts)
        else:
            mask = rng.random() < 0.3
            shape = rng.choice(QO_SHAPES)
            if mask:  # the packed form: planning stays free of kernels
                opts.pop("causal", None)
                kv_lens = [max(n, 40) for n in shape]
                opts["packed_custom_mask"] = torch.zeros(sum(-(-a * b // 8) for a, b in zip(shape, kv_lens)),
                                                         dtype=torch.uint8)
            w = _prefill(hd, hd_vo, group, q, kv, o, shape, kind == "paged", opts)
        _check(w, q, kv, o, window or w.planned.opts.window_left >= 0, lse, sinks, f"{kind} {opts} d{hd}/{hd_vo} g{group}", family)


def _block_sparse(rng, hd, group, q, kv, o):
    """A BSR plan of a random block shape and size (one to three blocks per row), or a variable one."""
    opts = dict(causal=rng.random() < 0.5, logits_soft_cap=rng.choice([None, 30.0]))
    if rng.random() < 0.3:
        w = flashinfer.VariableBlockSparseAttentionWrapper(_ws())
        rows, cols = rng.choice([(4, 6), (40, 50)])
        row_sz = torch.tensor([[rng.choice([1, 7, 64, 300])] * rows] * 2, dtype=torch.int32)
        w.plan(torch.rand(2, rows, cols) < 0.5, row_sz, torch.full((2, cols), rng.choice([1, 64, 100]),
               dtype=torch.int32), 2 * group, 2, hd, q_data_type=q, kv_data_type=kv, **opts)
        return w
    R, C = rng.choice([(1, 1), (16, 1), (16, 16), (64, 1), (64, 64), (128, 128)])
    M, NB = rng.choice([R, 1000, 9000, 20000]), rng.choice([3, 50])
    MB = -(-M // R)
    per_row = np.array([rng.randint(0, 3) for _ in range(MB)])
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    if rng.random() < 0.3:  # the packed form: planning stays free of kernels
        qo = np.minimum(R, M - R * np.arange(MB))
        opts["packed_mask"] = torch.zeros(int((-(-(qo * per_row * C) // 8)).sum()), dtype=torch.uint8)
    w = flashinfer.BlockSparseAttentionWrapper(_ws())
    w.plan(_i32(indptr.tolist()), _i32([rng.randrange(NB) for _ in range(int(indptr[-1]))]), M, NB * C, R, C, 2 * group,
           2, hd, q_data_type=q, kv_data_type=kv, o_data_type=o, **opts)
    return w


def test_block_sparse_wrappers(family):
    """The sparse wrappers' configuration choice (block shapes, groups, dtypes, options; plans only)."""
    rng = random.Random(4321)
    for _ in range(60):
        hd = rng.choice([d for d, d_vo in HEAD_DIM_QK_VO if d == d_vo])
        q, kv = rng.choice(DTYPES)
        o = rng.choice(Q_DTYPES)
        group = rng.choice([1, 2, 4, 8, 16, 32, 64] + ([] if q == torch.float32 else [128]))
        w = _block_sparse(rng, hd, group, q, kv, o)
        o = w.planned.opts.o_dtype
        _check(w, q, kv, o, False, rng.random() < 0.5, False, f"sparse d{hd} g{group} {q}/{kv} {w.planned.cfg}", family)


def test_covering_is_what_the_aot_tier_compiles():
    names = {c.name for c in all_aot_configs() if c.name.startswith("attn_") and "variant" not in c.name}
    assert names == {coverage.config_name(r, b) for b in coverage.BACKENDS for r in coverage.covering(b)}
    for b in coverage.BACKENDS:
        assert coverage.launchable_pairs(b) <= coverage.covered_pairs(b)
