"""Bad and edge inputs (issue 13): every index/length/mask tensor argument of the page, RoPE and
bit-packing functions, and the edge inputs of norm and activation. Each row asserts either a clear
error naming the argument or the reference answer. Then the checked mode
(``flashinfer_triton.checked()`` / ``FLASHINFER_TRITON_CHECKED=1``): each bad value raises an
error naming the argument and its first bad element, the default mode stays unchecked and never
writes outside the cache, and property tests (hypothesis) over random page tables.

Rows for decode/prefill/cascade and sampling go in the marked sections of ``STRUCTURE_CASES`` and
``VALUE_CASES`` (same row format: an ``Op`` with its index arguments, or a ``ValueCase``).

Inputs come from fixed seeds (``torch.manual_seed(0)`` in each builder); ids say the op, the
argument and the input.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import flashinfer_triton as fi
from flashinfer_triton import _checks
from tests.helpers import DEVICE, assert_close_to_reference
from tests.reference import ops as ref_ops
from tests.reference import page_cascade as ref_page

I32 = dict(dtype=torch.int32, device=DEVICE)
ENABLED_AT_IMPORT = _checks.ENABLED
INT32, INT64 = torch.int32, torch.int64


@pytest.fixture(autouse=True)
def _default_mode():
    """Every test starts in the default (unchecked) mode and leaves it so."""
    with fi.checked(False):
        yield


# =========================================================================== builders (fixed seeds)

PAGE_SIZE, HEADS, DIM = 4, 2, 16


def _page_table():
    """Four requests (one empty), pages scattered in a pool of 13, and an append of 1-5 rows each."""
    seq = torch.tensor([5, 0, 9, 3])
    new = torch.tensor([2, 0, 5, 3])
    pages = (seq + PAGE_SIZE - 1) // PAGE_SIZE
    g = torch.Generator().manual_seed(0)
    total = int(pages.sum()) + 6
    kv_indptr = torch.cat([torch.zeros(1, dtype=torch.long), pages.cumsum(0)])
    kv_indices = torch.randperm(total, generator=g)[: int(pages.sum())]
    last = torch.where(seq > 0, (seq - 1) % PAGE_SIZE + 1, torch.zeros_like(seq))
    append_indptr = torch.cat([torch.zeros(1, dtype=torch.long), new.cumsum(0)])
    b, p = ref_page.batch_indices_positions(append_indptr, seq, int(new.sum()))
    return dict(total_pages=total, kv_indptr=kv_indptr.to(**I32), kv_indices=kv_indices.to(**I32),
                kv_last_page_len=last.to(**I32), append_indptr=append_indptr.to(**I32), seq_lens=seq.to(**I32),
                batch_indices=b.to(DEVICE), positions=p.to(DEVICE), nnz=int(new.sum()))


def _append_args():
    torch.manual_seed(0)
    t = _page_table()
    cache = torch.randn(t["total_pages"], 2, PAGE_SIZE, HEADS, DIM, device=DEVICE).half()
    k = torch.randn(t["nnz"], HEADS, DIM, device=DEVICE).half()
    v = torch.randn(t["nnz"], HEADS, DIM, device=DEVICE).half()
    return dict(append_key=k, append_value=v, batch_indices=t["batch_indices"], positions=t["positions"],
                paged_kv_cache=cache, kv_indices=t["kv_indices"], kv_indptr=t["kv_indptr"],
                kv_last_page_len=t["kv_last_page_len"])


def _call_append(a):
    cache = a["paged_kv_cache"].clone()
    fi.append_paged_kv_cache(a["append_key"], a["append_value"], a["batch_indices"], a["positions"], cache,
                             a["kv_indices"], a["kv_indptr"], a["kv_last_page_len"])
    return cache


def _guarded_append_reference(a, page_size=PAGE_SIZE):
    """The documented default-mode answer: rows whose request, position or page id is out of range
    are dropped; every other row is written as the reference writes it. Also returns the
    (page, slot) targets, in row order."""
    cache = a["paged_kv_cache"].clone()
    targets = []
    b = a["batch_indices"].long().tolist()
    pos = a["positions"].long().tolist()
    indptr = a["kv_indptr"].long().tolist()
    indices = a["kv_indices"].long().tolist()
    batch, n_idx, n_pages = len(indptr) - 1, len(indices), cache.shape[0]
    for i in range(len(b)):
        if not (0 <= b[i] < batch and pos[i] >= 0):
            continue
        start, end = indptr[b[i]], indptr[b[i] + 1]
        it = start + pos[i] // page_size
        if start < 0 or it >= end or it >= n_idx or not 0 <= indices[it] < n_pages:
            continue
        targets.append((indices[it], pos[i] % page_size))
        cache[indices[it], 0, pos[i] % page_size] = a["append_key"][i]
        cache[indices[it], 1, pos[i] % page_size] = a["append_value"][i]
    return cache, targets


def _check_append(a, got):
    want = a["paged_kv_cache"].clone()
    ref_page.append_paged_kv_cache(a["append_key"], a["append_value"], a["batch_indices"], a["positions"],
                                   want[:, 0], want[:, 1], a["kv_indices"], a["kv_indptr"], "NHD")
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


def _positions_args():
    t = _page_table()
    return dict(append_indptr=t["append_indptr"], seq_lens=t["seq_lens"], nnz=t["nnz"])


def _call_positions(a):
    return fi.get_batch_indices_positions(a["append_indptr"], a["seq_lens"], a["nnz"])


def _check_positions(a, got):
    """The reference's rows; with an append_indptr past nnz, its first nnz rows."""
    want_b, want_p = ref_page.batch_indices_positions(a["append_indptr"].cpu(), a["seq_lens"].cpu(), a["nnz"])
    n = a["nnz"]
    assert torch.equal(got[0].cpu(), want_b[:n]) and torch.equal(got[1].cpu(), want_p[:n])


def _seq_lens_args():
    t = _page_table()
    return dict(kv_indptr=t["kv_indptr"], kv_last_page_len=t["kv_last_page_len"], page_size=PAGE_SIZE)


def _call_seq_lens(a):
    return fi.get_seq_lens(a["kv_indptr"], a["kv_last_page_len"], a["page_size"])


def _check_seq_lens(a, got):
    assert torch.equal(got.cpu(), ref_page.seq_lens(a["kv_indptr"].cpu(), a["kv_last_page_len"].cpu(), a["page_size"]))


ROPE_LENS, RQ, RK, RD = [3, 0, 4], 3, 2, 32


def _qk():
    torch.manual_seed(0)
    n = sum(ROPE_LENS)
    return torch.randn(n, RQ, RD, device=DEVICE), torch.randn(n, RK, RD, device=DEVICE)


def _rope_ragged_args():
    q, k = _qk()
    indptr = torch.tensor([0] + np.cumsum(ROPE_LENS).tolist(), **I32)
    offsets = torch.tensor([7, 100, 2999], **I32)
    return dict(q=q, k=k, indptr=indptr, offsets=offsets)


def _rope_pos_args():
    q, k = _qk()
    return dict(q=q, k=k, pos_ids=torch.tensor([0, 5, 9, 1000, 3, 3, 77], **I32))


def _rope_cache_args():
    q, k = _qk()
    return dict(positions=torch.tensor([0, 5, 9, 63, 3, 3, 17], **I32), query=q.flatten(1), key=k.flatten(1),
                cos_sin_cache=ref_ops.cos_sin_cache(64, RD).to(DEVICE))


LLAMA = dict(llama31=(1.0, 4.0, 8192.0), scale=8.0, theta=5e5)


def _rope_fn(name):
    """(call, check) for one of the ten RoPE functions."""
    f = getattr(fi, name)
    inplace = name.endswith("_inplace")
    kw = LLAMA if "llama31" in name else dict(llama31=None, scale=1.0, theta=1e4)

    def call(a):
        if "cos_sin_cache" in name:
            args = (a["positions"], a["query"].clone(), a["key"].clone(), RD, a["cos_sin_cache"])
            out = f(*args)
            return (args[1], args[2]) if inplace else out
        q, k = a["q"].clone(), a["k"].clone()
        out = f(q, k, a["indptr"], a["offsets"]) if "pos_ids" not in name else f(q, k, a["pos_ids"])
        return (q, k) if inplace else out

    def check(a, got):
        if "cos_sin_cache" in name:
            n = a["query"].shape[0]
            pos, xs = a["positions"].long().cpu(), (a["query"].view(n, RQ, RD), a["key"].view(n, RK, RD))
            cos, sin = ref_ops.rope_cos_sin(pos, RD)
            c32, s32 = a["cos_sin_cache"].cpu()[pos].double().split(RD // 2, dim=-1)
        else:
            pos = a["pos_ids"].long().cpu() if "pos_ids" in name else ref_ops.positions_from_indptr(
                a["indptr"].cpu(), a["offsets"].cpu())
            xs = (a["q"], a["k"])
            cos, sin = ref_ops.rope_cos_sin(pos, RD, kw["scale"], kw["theta"], kw["llama31"])
            c32, s32 = ref_ops.rope_cos_sin(pos, RD, kw["scale"], kw["theta"], kw["llama31"], compute_dtype=torch.float32)
        for out, x in zip(got, xs):
            x = x.cpu()
            exact = ref_ops.apply_rotary(x, cos, sin, RD, False)
            lowp = ref_ops.apply_rotary(x, c32, s32, RD, False, compute_dtype=torch.float32, out_dtype=x.dtype)
            assert_close_to_reference(out.cpu().view(x.shape), exact, lowp)

    return call, check


def _packbits_args():
    torch.manual_seed(0)
    lens = [0, 9, 3, 17]
    return dict(x=torch.rand(sum(lens) + 2, device=DEVICE) < 0.5,
                indptr=torch.tensor([0] + np.cumsum(lens).tolist(), **I32))


def _call_packbits(a):
    return fi.segment_packbits(a["x"], a["indptr"])


def _check_packbits(a, got):
    ind = a["indptr"].tolist()
    want = [np.packbits(a["x"][ind[i]:ind[i + 1]].cpu().numpy()) for i in range(len(ind) - 1)]
    assert torch.equal(got[0].cpu(), torch.from_numpy(np.concatenate(want)))


# =========================================================================== structure table


@dataclass
class Arg:
    """An index argument: the dtypes it accepts, its layout rule (``_checks.index_tensor``), and
    which argument an error names when its entry count is off (None: any count is accepted)."""

    dtypes: Sequence[torch.dtype] = (INT32,)
    layout: str = "reject"
    count_name: Optional[str] = "self"


@dataclass
class Op:
    name: str
    build: Callable[[], dict]
    call: Callable[[dict], object]
    check: Callable[[dict, object], None]
    args: Dict[str, Arg] = field(default_factory=dict)


_PAGE_OPS = [
    Op("append_paged_kv_cache", _append_args, _call_append, _check_append, {
        "batch_indices": Arg(), "positions": Arg(), "kv_indices": Arg(count_name=None),
        "kv_indptr": Arg(count_name="kv_last_page_len"), "kv_last_page_len": Arg()}),
    Op("get_batch_indices_positions", _positions_args, _call_positions, _check_positions, {
        "append_indptr": Arg((INT32, INT64), "copy", "seq_lens"), "seq_lens": Arg((INT32, INT64), "copy")}),
    Op("get_seq_lens", _seq_lens_args, _call_seq_lens, _check_seq_lens, {
        "kv_indptr": Arg(layout="any", count_name="kv_last_page_len"), "kv_last_page_len": Arg(layout="any")}),
    Op("segment_packbits", _packbits_args, _call_packbits, _check_packbits, {
        "indptr": Arg((INT32, INT64), "copy", None)}),
]
_ROPE_OPS = []
for _name in ("apply_rope", "apply_rope_inplace", "apply_llama31_rope", "apply_llama31_rope_inplace"):
    _ROPE_OPS.append(Op(_name, _rope_ragged_args, *_rope_fn(_name), {
        "indptr": Arg(count_name="offsets"), "offsets": Arg()}))
for _name in ("apply_rope_pos_ids", "apply_rope_pos_ids_inplace", "apply_llama31_rope_pos_ids",
              "apply_llama31_rope_pos_ids_inplace"):
    _ROPE_OPS.append(Op(_name, _rope_pos_args, *_rope_fn(_name), {"pos_ids": Arg((INT32, INT64), "any")}))
for _name in ("apply_rope_with_cos_sin_cache", "apply_rope_with_cos_sin_cache_inplace"):
    _ROPE_OPS.append(Op(_name, _rope_cache_args, *_rope_fn(_name), {"positions": Arg((INT32, INT64), "any")}))

STRUCTURE_OPS = _PAGE_OPS + _ROPE_OPS
# ---- attention (decode / prefill / cascade): Ops for plan()/run() index arguments go here
# ---- sampling: Ops for `indices`, per-row top_k/top_p tensors, draft token ids go here


def _strided(t):  # same values, stride 2
    return torch.repeat_interleave(t, 2)[::2]


def _column(t):  # same values, a column of a [n, 2] table
    return torch.stack([t, torch.zeros_like(t)], 1)[:, 0]


MUTATIONS = {
    "int64": lambda t: t.long(),
    "int32": lambda t: t.int(),
    "float32": lambda t: t.float(),
    "uint8": lambda t: t.to(torch.uint8),
    "rank2": lambda t: t.unsqueeze(0),
    "list": lambda t: t.tolist(),
    "one_short": lambda t: t[:-1],
    "one_long": lambda t: torch.cat([t, t[-1:]]),
    "strided": _strided,
    "column": _column,
}


def _expect(name: str, arg: Arg, mutation: str, t: torch.Tensor):
    """("raises", type, match) or ("reference",); None where the mutation does not apply."""
    if mutation in ("int64", "int32", "float32", "uint8"):
        dtype = {"int64": INT64, "int32": INT32, "float32": torch.float32, "uint8": torch.uint8}[mutation]
        if dtype == t.dtype:
            return None
        return ("reference",) if dtype in arg.dtypes else ("raises", TypeError, name)
    if mutation == "rank2":
        return ("raises", ValueError, name)
    if mutation == "list":
        return ("raises", TypeError, name)
    if mutation in ("one_short", "one_long"):
        if arg.count_name is None:
            return ("reference",) if mutation == "one_long" else None
        return ("raises", ValueError, name if arg.count_name == "self" else arg.count_name)
    # strided, column
    if arg.layout == "reject":
        return ("raises", ValueError, f"{name}: expected a contiguous tensor")
    return ("reference",)


def _structure_rows():
    rows = []
    for op in STRUCTURE_OPS:
        canonical = op.build()
        for name, arg in op.args.items():
            for mutation in MUTATIONS:
                e = _expect(name, arg, mutation, canonical[name])
                if e is not None:
                    rows.append(pytest.param(op, name, mutation, e, id=f"{op.name}-{name}-{mutation}"))
    return rows


@pytest.mark.parametrize("op,name,mutation,expect", _structure_rows())
def test_structure(op, name, mutation, expect):
    a = op.build()
    bad = dict(a, **{name: MUTATIONS[mutation](a[name])})
    if expect[0] == "raises":
        with pytest.raises(expect[1], match=expect[2]):
            op.call(bad)
    else:
        op.check(a, op.call(bad))


def test_structure_table_covers_every_public_index_argument():
    """A row for each index/length/mask argument of each public function of these modules."""
    want = {
        "append_paged_kv_cache": {"batch_indices", "positions", "kv_indices", "kv_indptr", "kv_last_page_len"},
        "get_batch_indices_positions": {"append_indptr", "seq_lens"},
        "get_seq_lens": {"kv_indptr", "kv_last_page_len"},
        "segment_packbits": {"indptr"},
    }
    for f in fi.rope.__all__:
        want[f] = ({"positions"} if "cos_sin_cache" in f else {"pos_ids"} if "pos_ids" in f else {"indptr", "offsets"})
    got = {op.name: set(op.args) for op in STRUCTURE_OPS}
    assert {k: got.get(k) for k in want} == want
    assert len(_structure_rows()) >= 150


# =========================================================================== values: default and checked mode


@dataclass
class ValueCase:
    """A bad value: ``make`` returns (args, call); ``reference`` gives the default mode's answer
    (None: no defined answer, only the checked-mode error is asserted); ``match`` is the
    checked-mode message (it starts with the argument and the first bad element)."""

    id: str
    make: Callable[[], Tuple[dict, Callable[[dict], object]]]
    match: str
    reference: Optional[Callable[[dict, object], None]] = None


def _append_with(**changes):
    def make():
        a = _append_args()
        for k, f in changes.items():
            a[k] = f(a[k])
        return a, _call_append
    return make


def _set(i, v):
    def f(t):
        t = t.clone()
        t[i] = v
        return t
    return f


def _check_guarded(a, got):
    assert torch.equal(got.view(torch.int16), _guarded_append_reference(a)[0].view(torch.int16))


def _rope_cache_with(positions, name="apply_rope_with_cos_sin_cache"):
    def make():
        a = _rope_cache_args()
        a["positions"] = torch.tensor(positions, **I32)
        return a, _rope_fn(name)[0]
    return make


def _check_cache_nan(a, got):
    """Tokens whose row is outside the cache are NaN; the others are the reference answer."""
    pos = a["positions"].long().cpu()
    bad = (pos < 0) | (pos >= a["cos_sin_cache"].shape[0])
    good = dict(a, positions=a["positions"][~bad.to(DEVICE)], query=a["query"][~bad.to(DEVICE)],
                key=a["key"][~bad.to(DEVICE)])
    for out in got:
        assert torch.isnan(out[bad.to(DEVICE)]).all()
    _rope_fn("apply_rope_with_cos_sin_cache")[1](good, tuple(o[~bad.to(DEVICE)] for o in got))


def _with(build, call, **changes):
    def make():
        a = build()
        for k, f in changes.items():
            a[k] = f(a[k])
        return a, call
    return make


_rope_call = _rope_fn("apply_rope")[0]
_pos_call = _rope_fn("apply_rope_pos_ids")[0]

VALUE_CASES = [
    # append_paged_kv_cache: rows aimed outside their request or the cache are dropped by default
    ValueCase("append-batch_indices-too-large", _append_with(batch_indices=_set(3, 4)),
              r"batch_indices\[3\] = 4: expected a request in \[0, 4\)", _check_guarded),
    ValueCase("append-batch_indices-negative", _append_with(batch_indices=_set(0, -1)),
              r"batch_indices\[0\] = -1", _check_guarded),
    ValueCase("append-batch_indices-empty-request", _append_with(batch_indices=_set(0, 1)),
              r"positions\[0\] = 3: expected a position in \[0, 0\) \(request batch_indices\[0\] = 1: 0 pages",
              _check_guarded),
    ValueCase("append-positions-past-pages", _append_with(positions=_set(1, 8)),
              r"positions\[1\] = 8: expected a position in \[0, 5\)", _check_guarded),
    ValueCase("append-positions-past-length-in-own-page", _append_with(positions=_set(1, 6)),
              r"positions\[1\] = 6: expected a position in \[0, 5\)", _check_guarded),
    ValueCase("append-positions-negative", _append_with(positions=_set(2, -3)),
              r"positions\[2\] = -3", _check_guarded),
    ValueCase("append-positions-huge", _append_with(positions=_set(4, 2**31 - 1)),
              r"positions\[4\] = 2147483647", _check_guarded),
    ValueCase("append-kv_indices-past-cache", _append_with(kv_indices=_set(2, 12)),
              r"kv_indices\[2\] = 12: expected a page id in \[0, 12\)", _check_guarded),
    ValueCase("append-kv_indices-negative", _append_with(kv_indices=_set(0, -7)),
              r"kv_indices\[0\] = -7", _check_guarded),
    ValueCase("append-kv_indptr-not-from-0", _append_with(kv_indptr=lambda t: t + 1),
              r"kv_indptr\[0\] = 1: expected 0", _check_guarded),
    ValueCase("append-kv_indptr-decreasing", _append_with(kv_indptr=_set(2, 1)),
              r"kv_indptr\[3\] = 2 < kv_indptr\[2\] = 1|kv_indptr\[2\] = 1 < kv_indptr\[1\] = 2", _check_guarded),
    ValueCase("append-kv_indptr-past-indices", _append_with(kv_indptr=_set(4, 8)),
              r"kv_indptr\[-1\] = 8: expected at most 6 \(kv_indices.numel\(\)\)", _check_guarded),
    ValueCase("append-kv_last_page_len-zero", _append_with(kv_last_page_len=_set(0, 0)),
              r"kv_last_page_len\[0\] = 0: expected a value in \[1, 4\] \(request 0 has 2 pages\)", _check_append),
    ValueCase("append-kv_last_page_len-past-page", _append_with(kv_last_page_len=_set(2, 5)),
              r"kv_last_page_len\[2\] = 5: expected a value in \[1, 4\]", _check_append),
    # get_batch_indices_positions / get_seq_lens
    ValueCase("positions-append_indptr-past-nnz", _with(_positions_args, _call_positions, nnz=lambda n: n - 2),
              r"append_indptr\[-1\] = 10: expected at most 8 \(nnz\)",
              lambda a, got: _check_positions(a, got)),
    ValueCase("positions-append_indptr-decreasing", _with(_positions_args, _call_positions, append_indptr=_set(2, 1)),
              r"append_indptr\[2\] = 1 < append_indptr\[1\] = 2"),
    ValueCase("positions-append_indptr-not-from-0", _with(_positions_args, _call_positions, append_indptr=_set(0, 1)),
              r"append_indptr\[0\] = 1: expected 0"),
    ValueCase("positions-seq_lens-shorter-than-append", _with(_positions_args, _call_positions, seq_lens=_set(2, 4)),
              r"seq_lens\[2\] = 4: expected at least 5"),
    ValueCase("seq_lens-kv_last_page_len-past-page", _with(_seq_lens_args, _call_seq_lens, kv_last_page_len=_set(3, 9)),
              r"kv_last_page_len\[3\] = 9: expected a value in \[1, 4\]", _check_seq_lens),
    ValueCase("seq_lens-kv_indptr-decreasing", _with(_seq_lens_args, _call_seq_lens, kv_indptr=_set(1, 3)),
              r"kv_indptr\[2\] = 2 < kv_indptr\[1\] = 3"),
    # RoPE
    ValueCase("rope-indptr-decreasing", _with(_rope_ragged_args, _rope_call, indptr=_set(1, 5)),
              r"indptr\[2\] = 3 < indptr\[1\] = 5: expected a non-decreasing indptr"),
    ValueCase("rope-indptr-not-from-0", _with(_rope_ragged_args, _rope_call, indptr=_set(0, 1)),
              r"indptr\[0\] = 1: expected 0"),
    ValueCase("rope-indptr-short-of-nnz", _with(_rope_ragged_args, _rope_call, indptr=_set(3, 6)),
              r"indptr\[-1\] = 6: expected 7 \(nnz, q.shape\[0\]\)"),
    ValueCase("rope-pos_ids-int64-past-int32", _with(_rope_pos_args, _pos_call, pos_ids=lambda t: _set(3, 2**31)(t.long())),
              r"pos_ids\[3\] = 2147483648: expected a position \(read as int32\)"),
    ValueCase("rope-cache-positions-past-cache", _rope_cache_with([0, 5, 64, 63, 3, 3, 17]),
              r"positions\[2\] = 64: expected a row of cos_sin_cache in \[0, 64\)", _check_cache_nan),
    ValueCase("rope-cache-positions-negative", _rope_cache_with([0, 5, 9, 63, -1, 3, 17]),
              r"positions\[4\] = -1", _check_cache_nan),
    ValueCase("rope-cache-inplace-positions-huge", _rope_cache_with([2**31 - 1] * 7, "apply_rope_with_cos_sin_cache_inplace"),
              r"positions\[0\] = 2147483647", _check_cache_nan),
    # ---- attention (decode / prefill / cascade): page ids vs the cache, qo_indptr vs q, last_page_len, masks
    # ---- sampling: indices out of range of probs' rows, NaN in probs (check_nan), draft ids past the vocabulary
]


@pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.id)
def test_value_checked_mode_names_argument_and_element(case):
    a, call = case.make()
    with fi.checked(), pytest.raises(ValueError, match=case.match):
        call(a)


@pytest.mark.parametrize("case", [c for c in VALUE_CASES if c.reference is not None], ids=lambda c: c.id)
def test_value_default_mode(case):
    """Unchecked (FlashInfer's behaviour: no error), and the documented answer: nothing written
    outside the cache or another request's pages; NaN for RoPE rows outside the cache."""
    a, call = case.make()
    case.reference(a, call(a))


def test_segment_packbits_values_always_checked():
    """segment_packbits reads indptr on the host anyway: its values are checked in every mode."""
    a = _packbits_args()
    for bad, match in (([0, 9, 3, 12, 29], r"indptr\[2\] = 3 < indptr\[1\] = 9"),
                       ([0, 9, 12, 40], r"indptr\[-1\] = 40: segments reach past x"),
                       ([-1, 9, 12, 29], r"indptr\[0\] = -1")):
        with pytest.raises(ValueError, match=match):
            fi.segment_packbits(a["x"], torch.tensor(bad, **I32))


# =========================================================================== norm and activation edge inputs


def _norm_rows():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 40, device=DEVICE)
    w = torch.randn(40, device=DEVICE)
    rows = [
        ("rmsnorm-weight-strided", lambda: fi.rmsnorm(x[:, 0], _strided(w)), (ValueError, "weight")),
        ("rmsnorm-weight-short", lambda: fi.rmsnorm(x[:, 0], w[:-1]), (ValueError, "weight")),
        ("rmsnorm-weight-dtype", lambda: fi.rmsnorm(x[:, 0], w.half()), (TypeError, "weight")),
        ("rmsnorm-input-last-dim-strided", lambda: fi.rmsnorm(x[..., ::2], w[:20]), (ValueError, "input")),
        ("rmsnorm-input-rank1", lambda: fi.rmsnorm(w, w), (ValueError, "input")),
        ("rmsnorm-out-shape", lambda: fi.rmsnorm(x[:, 0], w, out=torch.empty(4, 40, device=DEVICE)), (ValueError, "out")),
        ("fused_add-residual-shape", lambda: fi.fused_add_rmsnorm(x[:, 0].clone(), x[:4, 0].clone(), w),
         (ValueError, "residual")),
        ("layernorm-gemma-dtype", lambda: fi.layernorm(x[:, 0], w.half(), w), (TypeError, "gemma")),
        ("silu-odd-width", lambda: fi.silu_and_mul(x[..., :39]), (ValueError, "input")),
        ("silu-last-dim-strided", lambda: fi.silu_and_mul(x[..., ::2]), (ValueError, "input")),
        ("silu-out-shape", lambda: fi.silu_and_mul(x, out=torch.empty(5, 3, 21, device=DEVICE)), (ValueError, "out")),
        ("silu-input-list", lambda: fi.silu_and_mul(x.tolist()), (TypeError, "input")),
    ]
    return [pytest.param(f, e, id=i) for i, f, e in rows]


@pytest.mark.parametrize("fn,expect", _norm_rows())
def test_norm_activation_errors(fn, expect):
    with pytest.raises(expect[0], match=expect[1]):
        fn()


@pytest.mark.parametrize("layout", ["rows-strided", "heads-strided", "zero-rows", "3d-noncollapsible"])
def test_norm_activation_strided_and_empty_give_reference(layout):
    torch.manual_seed(0)
    base = torch.randn(6, 4, 2 * 24, device=DEVICE)
    x = {"rows-strided": base[::2, 1], "heads-strided": base[:, ::2], "zero-rows": base[:0, 0],
         "3d-noncollapsible": base.transpose(0, 1)}[layout]
    w = torch.randn(x.shape[-1], device=DEVICE)
    got = fi.rmsnorm(x, w, 1e-6)
    assert_close_to_reference(got, ref_ops.rmsnorm(x, w, 1e-6), ref_ops.rmsnorm(x, w, 1e-6, compute_dtype=torch.float32,
                                                                                 out_dtype=x.dtype))
    got = fi.silu_and_mul(x)
    assert got.shape == x.shape[:-1] + (x.shape[-1] // 2,)
    assert_close_to_reference(got, ref_ops.act_and_mul(x, "silu"),
                              ref_ops.act_and_mul(x, "silu", compute_dtype=torch.float32, out_dtype=x.dtype))


# =========================================================================== the checked mode itself


def test_checked_mode_off_by_default_and_env_parsing(monkeypatch):
    assert ENABLED_AT_IMPORT == _checks._env_flag()
    if os.environ.get("FLASHINFER_TRITON_CHECKED") is None:
        assert not ENABLED_AT_IMPORT
    for value, on in (("1", True), ("true", True), ("0", False), ("", False), ("off", False)):
        monkeypatch.setenv("FLASHINFER_TRITON_CHECKED", value)
        assert _checks._env_flag() is on
    monkeypatch.delenv("FLASHINFER_TRITON_CHECKED")
    assert _checks._env_flag() is False


def test_checked_mode_from_the_environment():
    """FLASHINFER_TRITON_CHECKED=1 at import turns the checks on: a bad page id raises."""
    code = ("import torch, flashinfer_triton as fi; from flashinfer_triton import _checks; assert _checks.ENABLED; "
            "c = torch.zeros(2, 2, 1, 1, 16).half(); x = torch.zeros(1, 1, 16).half(); i = torch.zeros(1, dtype=torch.int32)\n"
            "try: fi.append_paged_kv_cache(x, x, i, i, c, torch.tensor([5], dtype=torch.int32), "
            "torch.tensor([0, 1], dtype=torch.int32), torch.tensor([1], dtype=torch.int32))\n"
            "except ValueError as e: print(e)")
    env = dict(os.environ, FLASHINFER_TRITON_CHECKED="1", TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "kv_indices[0] = 5: expected a page id in [0, 2)" in out.stdout, out.stderr[-2000:]


def test_checked_context_manager_and_decorator():
    assert not _checks.ENABLED
    with fi.checked():
        assert _checks.ENABLED
        with fi.checked(False):
            assert not _checks.ENABLED
        assert _checks.ENABLED
    assert not _checks.ENABLED
    with pytest.raises(RuntimeError), fi.checked():
        raise RuntimeError
    assert not _checks.ENABLED

    @fi.checked()
    def f():
        return _checks.ENABLED

    assert f() and not _checks.ENABLED
    with pytest.raises(TypeError, match="enabled"):
        fi.checked(f)


def test_checked_mode_accepts_valid_inputs():
    """Valid inputs pass every check and give the reference answer."""
    with fi.checked():
        a = _append_args()
        _check_append(a, _call_append(a))
        a = _positions_args()
        _check_positions(a, _call_positions(a))
        a = _rope_cache_args()
        _rope_fn("apply_rope_with_cos_sin_cache")[1](a, _rope_fn("apply_rope_with_cos_sin_cache")[0](a))
        a = _rope_ragged_args()
        _rope_fn("apply_rope")[1](a, _rope_call(a))


def test_check_functions_directly():
    """The building blocks the attention and sampling modules call."""
    t = lambda *v: torch.tensor(v, **I32)  # noqa: E731
    _checks.check_indptr("qo_indptr", t(0, 2, 2, 5), total=5)
    with pytest.raises(ValueError, match=r"qo_indptr\[-1\] = 5: expected 6 \(q.shape\[0\]\)"):
        _checks.check_indptr("qo_indptr", t(0, 2, 2, 5), total=6, total_name="q.shape[0]")
    _checks.check_paged_kv(t(0, 1, 3), t(4, 0, 2, 9), t(1, 4), 4, num_pages=5, names=("indptr", "indices", "last_page_len"))
    with pytest.raises(ValueError, match=r"indices\[1\] = 5: expected a page id in \[0, 5\)"):
        _checks.check_paged_kv(t(0, 1, 3), t(4, 5, 2), t(1, 4), 4, num_pages=5, names=("indptr", "indices", "last_page_len"))
    with pytest.raises(ValueError, match=r"paged_kv_indices\[0\] = -1: expected a page id that is non-negative"):
        _checks.check_page_ids("paged_kv_indices", t(-1, 3), None)
    with pytest.raises(ValueError, match=r"indices\[2\] = 8: expected a row of probs in \[0, 8\)"):
        _checks.check_in_range("indices", t(0, 7, 8), 0, 8, "a row of probs")
    probs = torch.full((3, 4), 0.25)
    _checks.check_no_nan("probs", probs)
    probs[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"probs\[2, 1\] = nan: expected no NaN"):
        _checks.check_no_nan("probs", probs)
    with pytest.raises(ValueError, match=r"mask\[1, 2\]: custom"):
        _checks.require(torch.tensor([[False, False, False], [False, False, True]]), lambda i: f"mask[{i[0]}, {i[1]}]: custom")


def test_index_tensor_layout_rules():
    col = torch.zeros(4, 2, **I32)[:, 0]
    with pytest.raises(ValueError, match=r"table: expected a contiguous tensor.*pass table.contiguous\(\)"):
        _checks.index_tensor("table", col)
    fixed = _checks.index_tensor("table", col, layout="copy")
    assert fixed.is_contiguous() and torch.equal(fixed, col)
    assert _checks.index_tensor("table", col, layout="any") is col
    assert _checks.index_tensor("one", torch.zeros(1, 2, **I32)[:, 0]) is not None  # one entry: any stride is fine
    with pytest.raises(ValueError, match="layout"):
        _checks.index_tensor("table", col, layout="sometimes")


# =========================================================================== property tests: page ops

_PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def _paged_append(draw):
    """A random page table after an append (empty requests, 1-row requests, any page size)."""
    page_size = draw(st.sampled_from([1, 3, 16]))
    batch = draw(st.integers(1, 5))
    old = draw(st.lists(st.integers(0, 20), min_size=batch, max_size=batch))
    new = draw(st.lists(st.integers(0, 4), min_size=batch, max_size=batch))
    seq = [o + n for o, n in zip(old, new)]
    pages = [(s + page_size - 1) // page_size for s in seq]
    spare = draw(st.integers(0, 3))
    perm = draw(st.permutations(list(range(sum(pages) + spare))))
    indptr = np.cumsum([0] + pages).tolist()
    last = [(s - 1) % page_size + 1 if s else 0 for s in seq]
    append_indptr = np.cumsum([0] + new).tolist()
    return page_size, indptr, perm[: sum(pages)], last, append_indptr, seq, sum(pages) + spare


def _property_args(table):
    page_size, indptr, indices, last, append_indptr, seq, total = table
    nnz = append_indptr[-1]
    torch.manual_seed(nnz)
    b, p = fi.get_batch_indices_positions(torch.tensor(append_indptr, **I32), torch.tensor(seq, **I32), nnz)
    cache = torch.randn(total, 2, page_size, 1, 16, device=DEVICE).half()
    kv = torch.randn(2, nnz, 1, 16, device=DEVICE).half()
    return dict(append_key=kv[0], append_value=kv[1], batch_indices=b, positions=p, paged_kv_cache=cache,
                kv_indices=torch.tensor(indices, **I32), kv_indptr=torch.tensor(indptr, **I32),
                kv_last_page_len=torch.tensor(last, **I32)), page_size


def _call_append_ps(a):
    cache = a["paged_kv_cache"].clone()
    fi.append_paged_kv_cache(a["append_key"], a["append_value"], a["batch_indices"], a["positions"], cache,
                             a["kv_indices"], a["kv_indptr"], a["kv_last_page_len"])
    return cache


@_PROPERTY
@given(_paged_append())
def test_property_append_matches_reference_and_passes_checked_mode(table):
    a, page_size = _property_args(table)
    with fi.checked():
        got = _call_append_ps(a)
        seq = fi.get_seq_lens(a["kv_indptr"], a["kv_last_page_len"], page_size)
    assert torch.equal(seq.cpu(), torch.tensor(table[5], dtype=torch.int32))
    want = a["paged_kv_cache"].clone()
    ref_page.append_paged_kv_cache(a["append_key"], a["append_value"], a["batch_indices"], a["positions"],
                                   want[:, 0], want[:, 1], a["kv_indices"], a["kv_indptr"], "NHD")
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@_PROPERTY
@given(_paged_append(), st.sampled_from(["batch_indices", "positions", "kv_indices"]), st.integers(0, 10**6),
       st.sampled_from([-1, 1, 1000]))
def test_property_corrupted_append_is_caught_or_confined(table, name, where, delta):
    """One corrupted entry: checked mode names it; the default mode writes nothing outside the
    rows' own request pages (the guarded reference), so no other request's data changes."""
    a, page_size = _property_args(table)
    if a[name].numel() == 0:
        return
    i = where % a[name].numel()
    bad = a[name].clone()
    bad[i] = bad[i] + delta if delta != -1 else -1
    a[name] = bad
    guarded, targets = _guarded_append_reference(a, page_size)
    assume(len(set(targets)) == len(targets))  # two rows on one slot: the winner is unordered on a GPU
    got = _call_append_ps(a)
    assert torch.equal(got.view(torch.int16), guarded.view(torch.int16))
    try:
        with fi.checked():
            _call_append_ps(a)
    except ValueError as e:
        assert str(e).startswith(("batch_indices[", "positions[", "kv_indices[")), str(e)
    else:  # the corruption kept every value valid (e.g. a position moved inside its own request)
        _checks.check_positions("positions", a["positions"], a["batch_indices"], a["kv_indptr"],
                                a["kv_last_page_len"], page_size)

