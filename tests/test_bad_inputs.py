"""Bad and edge inputs (issue 13): every index/length/mask tensor argument of the page, RoPE and
bit-packing functions, and the edge inputs of norm and activation. Each row asserts either a clear
error naming the argument or the reference answer. Then the checked mode
(``flashinfer_triton.checked()`` / ``FLASHINFER_TRITON_CHECKED=1``): each bad value raises an
error naming the argument and its first bad element, the default mode stays unchecked and never
writes outside the cache, and property tests (hypothesis) over random page tables.

Sampling: the ``indices`` and per-row top_k/top_p/temperature tensors are rows of the structure
table (one-hot rows make a sample exact); argument errors, NaN/zero parameters and FlashInfer's
out-of-range semantics (top_k <= 0, top_p >= 1, min_p > 1, negative temperature) have their own
rows. Attention: the run() inputs of the paged decode and prefill wrappers (q, the cache, out,
lse, sinks), and page ids against the cache in checked mode (plan() index arguments are in
test_decode.py / test_prefill.py).

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

# ---- sampling: `indices` and the per-row top_k / top_p / temperature tensors

SROWS, SVOCAB = 6, 32
_SAMPLE_INDICES = [5, 0, 2, 2, 4]  # output row i is drawn from input row _SAMPLE_INDICES[i]


def _onehot_args():
    """One-hot rows (a different token per row): a sample is exact, whatever the random draw."""
    hot = torch.tensor([3, 17, 0, 31, 8, 20])
    probs = torch.zeros(SROWS, SVOCAB)
    probs[torch.arange(SROWS), hot] = 1.0
    return dict(probs=probs.to(DEVICE), hot=hot, indices=torch.tensor(_SAMPLE_INDICES, **I32))


def _call_sample_indices(a):
    return fi.sampling_from_probs(a["probs"], a["indices"], generator=_sampling_gen())


def _check_sample_indices(a, got):
    """hot[indices]; a one_long mutation repeats the last index, so its last output is repeated."""
    idx = a["indices"].long().cpu()
    idx = torch.cat([idx, idx[-1:].expand(got.shape[0] - idx.shape[0])])
    assert torch.equal(got.cpu().long(), a["hot"][idx])


def _sampling_gen():
    g = torch.Generator(device=DEVICE)
    g.manual_seed(0)
    return g


def _renorm_args():
    torch.manual_seed(0)
    return dict(probs=torch.softmax(torch.randn(SROWS, SVOCAB, device=DEVICE) * 2, -1),
                top_k=torch.tensor([1, 3, 0, 32, 5, 40], **I32),  # 0 and >= vocab keep every token
                top_p=torch.tensor([0.05, 0.5, 0.9, 1.0, 0.3, 1.5], device=DEVICE),
                temperature=torch.tensor([0.5, 1.0, 2.0, 0.25, 3.0, 0.7], device=DEVICE))


def _renorm_ref(probs, keep):
    kept = torch.where(keep, probs.double(), 0.0)
    return kept / kept.sum(-1, keepdim=True)


def _top_k_ref(a):
    p = a["probs"].cpu().double()
    keep = torch.ones_like(p, dtype=torch.bool)
    for i, k in enumerate(a["top_k"].tolist()):
        if 0 < k < SVOCAB:
            keep[i] = p[i] >= p[i].sort(descending=True).values[k - 1]
    return _renorm_ref(p, keep)


def _top_p_ref(a):
    """The smallest top set whose mass reaches top_p (the whole row for top_p >= 1)."""
    p = a["probs"].cpu().double()
    keep = torch.ones_like(p, dtype=torch.bool)
    for i, tp in enumerate(a["top_p"].tolist()):
        if tp < 1:
            v, _ = p[i].sort(descending=True)
            n = int((v.cumsum(0) < tp).sum()) + 1
            keep[i] = p[i] >= v[n - 1]
    return _renorm_ref(p, keep)


def _check_renorm(ref_fn):
    def check(a, got):
        torch.testing.assert_close(got.cpu().double(), ref_fn(a), atol=1e-6, rtol=1e-5)
    return check


def _check_softmax(a, got):
    x = a["probs"].cpu().double() / a["temperature"].cpu().double()[:, None]
    torch.testing.assert_close(got.cpu().double(), torch.softmax(x, -1), atol=1e-6, rtol=1e-5)


_SAMPLING_OPS = [
    Op("sampling_from_probs", _onehot_args, _call_sample_indices, _check_sample_indices,
       {"indices": Arg((INT32, INT64), "copy", None)}),
    Op("top_k_renorm_probs", _renorm_args, lambda a: fi.top_k_renorm_probs(a["probs"], a["top_k"]),
       _check_renorm(_top_k_ref), {"top_k": Arg((INT32, INT64), "copy")}),
    Op("top_p_renorm_probs", _renorm_args, lambda a: fi.top_p_renorm_probs(a["probs"], a["top_p"]),
       _check_renorm(_top_p_ref), {"top_p": Arg((torch.float32,), "copy")}),
    Op("softmax", _renorm_args, lambda a: fi.sampling.softmax(a["probs"], a["temperature"]), _check_softmax,
       {"temperature": Arg((torch.float32,), "copy")}),
]

STRUCTURE_OPS = _PAGE_OPS + _ROPE_OPS + _SAMPLING_OPS
# ---- attention (decode / prefill / cascade): plan() index arguments are covered in test_decode.py /
# test_prefill.py; run() inputs are the rows of _attention_rows() below


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


def _chain_args(mutate=None):
    torch.manual_seed(0)
    b, n = 3, 2
    draft = torch.softmax(torch.randn(b, n, SVOCAB, device=DEVICE), -1)
    target = torch.softmax(torch.randn(b, n + 1, SVOCAB, device=DEVICE), -1)
    ids = torch.randint(0, SVOCAB, (b, n), device=DEVICE, dtype=torch.int32)
    return dict(draft=draft, target=target, ids=mutate(ids) if mutate else ids)


def _call_chain(a):
    return fi.chain_speculative_sampling(a["draft"], a["ids"], a["target"], generator=_sampling_gen())


# Attention: a decode and a paged-prefill batch (page size 4, 2 KV heads, GQA group 2, head_dim 64).
AQ, AKV, AD, APS = 4, 2, 64, 4


def _attn_args(kind, bad_page=None):
    from tests.reference.attention import build_paged_cache

    gen = torch.Generator().manual_seed(0)
    cache, indptr, indices, last, ks, vs = build_paged_cache([5, 9], APS, AKV, AD, torch.float16, DEVICE, generator=gen)
    if bad_page is not None:
        indices = _set(1, bad_page)(indices)
    qo = [1, 1] if kind == "decode" else [2, 3]
    q = torch.randn(sum(qo), AQ, AD, generator=gen).half().to(DEVICE)
    return dict(kind=kind, cache=cache, indptr=indptr, indices=indices, last=last, ks=ks, vs=vs, q=q, qo=qo)


def _attn_wrapper(a):
    ws = torch.empty(16 << 20, dtype=torch.uint8, device=DEVICE)
    if a["kind"] == "decode":
        w = fi.BatchDecodeWithPagedKVCacheWrapper(ws)
        w.plan(a["indptr"], a["indices"], a["last"], AQ, AKV, AD, APS, q_data_type=torch.float16)
    else:
        w = fi.BatchPrefillWithPagedKVCacheWrapper(ws)
        qo_indptr = torch.tensor([0] + np.cumsum(a["qo"]).tolist(), **I32)
        w.plan(qo_indptr, a["indptr"], a["indices"], a["last"], AQ, AKV, AD, APS, causal=True,
               q_data_type=torch.float16)
    return w


def _attn_plan_run(cache_pages=None):
    def call(a):
        cache = a["cache"] if cache_pages is None else a["cache"][:cache_pages]
        return _attn_wrapper(a).run(a["q"], cache)
    return call


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
    # ---- attention: page ids (device tensors are read in checked mode) against the cache given to run()
    ValueCase("decode-indices-past-cache", lambda: (_attn_args("decode"), _attn_plan_run(cache_pages=2)),
              r"indices: page id 7 is out of range for a cache of 2 pages"),
    ValueCase("decode-indices-negative", lambda: (_attn_args("decode", bad_page=-1), _attn_plan_run()),
              r"indices: page ids must be non-negative, got -1"),
    ValueCase("prefill-indices-past-cache", lambda: (_attn_args("prefill"), _attn_plan_run(cache_pages=2)),
              r"paged_kv_indices: page id 7 is out of range for a cache of 2 pages"),
    ValueCase("prefill-indices-negative", lambda: (_attn_args("prefill", bad_page=-3), _attn_plan_run()),
              r"paged_kv_indices: page ids must be non-negative, got -3"),
    # ---- sampling: indices out of range of the input's rows, draft ids past the vocabulary, NaN/0 parameters
    ValueCase("sampling-indices-past-rows", _with(_onehot_args, _call_sample_indices, indices=_set(1, 6)),
              r"indices\[1\] = 6: expected a row of the input in \[0, 6\)"),
    ValueCase("sampling-indices-negative", _with(_onehot_args, _call_sample_indices, indices=_set(3, -1)),
              r"indices\[3\] = -1: expected a row of the input in \[0, 6\)"),
    ValueCase("sampling-indices-int64-past-int32",
              _with(_onehot_args, _call_sample_indices, indices=lambda t: _set(0, 2**32)(t.long())),
              r"indices\[0\] = 4294967296"),
    ValueCase("chain-draft_token_ids-past-vocab", lambda: (_chain_args(_set((1, 0), SVOCAB)), _call_chain),
              r"draft_token_ids\[1, 0\] = 32: expected a token id of the vocabulary in \[0, 32\)"),
    ValueCase("chain-draft_token_ids-negative", lambda: (_chain_args(_set((0, 1), -5)), _call_chain),
              r"draft_token_ids\[0, 1\] = -5"),
    ValueCase("top_p-tensor-nan", _with(_renorm_args, lambda a: fi.top_p_renorm_probs(a["probs"], a["top_p"]),
                                        top_p=_set(2, float("nan"))),
              r"top_p\[2\] = nan: expected no NaN"),
    ValueCase("min_p-tensor-nan", _with(_renorm_args, lambda a: fi.min_p_sampling_from_probs(a["probs"], a["top_p"]),
                                        top_p=_set(4, float("nan"))),
              r"min_p\[4\] = nan: expected no NaN"),
    ValueCase("temperature-tensor-zero", _with(_renorm_args, lambda a: fi.sampling.softmax(a["probs"], a["temperature"]),
                                               temperature=_set(1, 0.0)),
              r"temperature\[1\] = 0: expected a non-zero temperature"),
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


# =========================================================================== sampling and attention run() errors


def _sampling_rows():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(4, SVOCAB, device=DEVICE), -1)
    i32 = lambda *v: torch.tensor(v, **I32)  # noqa: E731
    S = fi.sampling
    rows = [
        ("logits-float64", lambda: S.sampling_from_logits(p.double()), (TypeError, "logits: expected dtype")),
        ("logits-bool", lambda: S.top_k_mask_logits(p > 0.1, 3), (TypeError, "logits: expected dtype")),
        ("logits-rank3", lambda: S.top_k_mask_logits(p[None], 3), (ValueError, "logits: expected a 2-D tensor")),
        ("logits-list", lambda: S.softmax(p.tolist()), (TypeError, "logits: expected a torch.Tensor")),
        ("probs-empty-vocab", lambda: S.top_k_renorm_probs(p[:, :0], 3), (ValueError, "probs: the vocabulary")),
        ("probs-rank1", lambda: S.top_p_renorm_probs(p[0], 0.5), (ValueError, "probs: expected a 2-D tensor")),
        ("probs-float64", lambda: S.min_p_sampling_from_probs(p.double(), 0.1), (TypeError, "probs: expected dtype")),
        ("top_k-tensor-vs-indices", lambda: S.top_k_sampling_from_probs(p, i32(1, 2, 3, 4), i32(0, 1)),
         (ValueError, r"top_k: expected shape \[2\]")),
        ("top_p-tensor-short", lambda: S.top_k_top_p_sampling_from_probs(p, 3, torch.ones(3, device=DEVICE)),
         (ValueError, r"top_p: expected shape \[4\]")),
        ("top_p-tensor-rank2", lambda: S.top_p_sampling_from_probs(p, torch.ones(4, 1, device=DEVICE)),
         (ValueError, "top_p")),
        ("top_k-bool", lambda: S.top_k_sampling_from_probs(p, True), (TypeError, "top_k: expected an int")),
        ("top_k-too-large-for-int32", lambda: S.top_k_mask_logits(p, 2**40), (ValueError, "top_k: .* does not fit")),
        ("min_p-tensor-int", lambda: S.min_p_sampling_from_probs(p, i32(1, 1, 1, 1)), (TypeError, "min_p")),
        ("min_p-tensor-long", lambda: S.min_p_sampling_from_probs(p, torch.ones(5, device=DEVICE)), (ValueError, "min_p")),
        ("top_p-nan", lambda: S.top_p_sampling_from_probs(p, float("nan")), (ValueError, "top_p: expected a number")),
        ("top_p-nan-renorm", lambda: S.top_p_renorm_probs(p, float("nan")), (ValueError, "top_p: expected a number")),
        ("min_p-nan", lambda: S.min_p_sampling_from_probs(p, float("nan")), (ValueError, "min_p: expected a number")),
        ("joint-top_p-nan", lambda: S.top_k_top_p_sampling_from_logits(p, 3, float("nan")), (ValueError, "top_p")),
        ("temperature-zero", lambda: S.softmax(p, 0.0), (ValueError, "temperature: expected a non-zero")),
        ("temperature-nan", lambda: S.softmax(p, float("nan")), (ValueError, "temperature: expected a number")),
        ("temperature-str", lambda: S.softmax(p, "1.0"), (TypeError, "temperature")),
        ("draft_token_ids-float", lambda: S.chain_speculative_sampling(p[:, None], torch.zeros(4, 1, device=DEVICE),
                                                                       torch.stack([p, p], 1)),
         (TypeError, "draft_token_ids")),
        ("draft_token_ids-shape", lambda: S.chain_speculative_sampling(p[:, None], torch.zeros(4, 2, **I32),
                                                                       torch.stack([p, p], 1)),
         (ValueError, r"draft_token_ids: expected shape \[4, 1\]")),
        ("accepted-num-int64", lambda: S.chain_speculative_sampling(
            p[:, None], torch.zeros(4, 1, **I32), torch.stack([p, p], 1),
            maybe_output_accepted_token_num=torch.zeros(4, dtype=torch.int64, device=DEVICE)),
         (TypeError, "maybe_output_accepted_token_num")),
        ("emitted-num-short", lambda: S.chain_speculative_sampling(
            p[:, None], torch.zeros(4, 1, **I32), torch.stack([p, p], 1),
            maybe_output_emitted_draft_token_num=torch.zeros(3, **I32)),
         (ValueError, "maybe_output_emitted_draft_token_num")),
        ("top_k-select-zero", lambda: S.top_k(p, 0), (ValueError, "k: expected 1 <= k")),
    ]
    return [pytest.param(f, e, id=i) for i, f, e in rows]


@pytest.mark.parametrize("fn,expect", _sampling_rows())
def test_sampling_errors(fn, expect):
    with pytest.raises(expect[0], match=expect[1]):
        fn()


def test_sampling_out_of_range_parameters_follow_flashinfer():
    """Values FlashInfer accepts with a defined meaning give that answer: top_k <= 0 or >= vocab and
    top_p >= 1 keep every token; min_p > 1 keeps none (no valid sample); a negative temperature is
    softmax(logits / T) (its padding lanes used to become +inf: NaN everywhere)."""
    a = _renorm_args()
    p, S = a["probs"], fi.sampling
    everything = _renorm_ref(p.cpu().double(), torch.ones(SROWS, SVOCAB, dtype=torch.bool))
    for got in (S.top_k_renorm_probs(p, -3), S.top_k_renorm_probs(p, SVOCAB + 5), S.top_p_renorm_probs(p, 1.5)):
        torch.testing.assert_close(got.cpu().double(), everything, atol=1e-6, rtol=1e-5)
    assert torch.equal(S.top_k_mask_logits(p, 0), p) and torch.equal(S.top_k_mask_logits(p, -1), p)
    samples, valid = S.min_p_sampling_from_probs(p, 2.0, generator=_sampling_gen(), return_valid=True)
    assert not valid.any()
    for t in (-0.5, -2.0):
        torch.testing.assert_close(S.softmax(p, t).cpu().double(), torch.softmax(p.cpu().double() / t, -1),
                                   atol=1e-6, rtol=1e-5)
    per_row = torch.tensor([-0.5, 1.0, -3.0, 2.0, -1.0, 0.3], device=DEVICE)
    torch.testing.assert_close(S.softmax(p, per_row).cpu().double(),
                               torch.softmax(p.cpu().double() / per_row.cpu().double()[:, None], -1), atol=1e-6, rtol=1e-5)


def _TOO_FEW_PAGES(a):
    return dict(cache=a["cache"][:2])


def _attention_rows():
    """run() inputs of the paged decode and prefill wrappers that must raise (planned: 4 query heads,
    2 KV heads of head_dim 64, page size 4, NHD, float16)."""
    return [pytest.param(kind, f, e, id=f"{kind}-{i}") for kind in ("decode", "prefill")
            for i, f, e in _attention_cases(kind)]


def _attention_cases(kind):
    """(id, mutation of the canonical run() arguments, expected error) for one wrapper kind."""
    n = 2 if kind == "decode" else 5
    pages = "indices" if kind == "decode" else "paged_kv_indices"
    h = lambda *shape: torch.zeros(*shape, dtype=torch.float16, device=DEVICE)  # noqa: E731
    return [
        ("q-bfloat16", lambda a: dict(q=a["q"].bfloat16()), (TypeError, "q: expected dtype")),
        ("q-int32", lambda a: dict(q=a["q"].int()), (TypeError, "q: expected dtype")),
        ("q-one-head-short", lambda a: dict(q=a["q"][:, :3].contiguous()), (ValueError, "q: expected shape")),
        ("q-one-head-extra", lambda a: dict(q=torch.cat([a["q"], a["q"][:, :1]], 1)), (ValueError, "q: expected shape")),
        ("q-rank2", lambda a: dict(q=a["q"].reshape(n, -1)), (ValueError, "q: expected shape")),
        ("q-last-dim-strided", lambda a: dict(q=torch.cat([a["q"], a["q"]], -1)[..., ::2]),
         (ValueError, "q: the last dimension must be contiguous")),
        ("q-list", lambda a: dict(q=a["q"].tolist()), (TypeError, "q: expected a torch.Tensor")),
        ("cache-hnd-for-nhd", lambda a: dict(cache=a["cache"].transpose(2, 3).contiguous()),
         (ValueError, "paged_kv_cache: expected page_size 4")),
        ("cache-float32", lambda a: dict(cache=a["cache"].float()), (TypeError, "paged_kv_cache: expected dtype")),
        ("cache-rank4", lambda a: dict(cache=a["cache"][:, 0]), (ValueError, "paged_kv_cache: expected dimension 1")),
        ("cache-one-kv-head", lambda a: dict(cache=a["cache"][..., :1, :].contiguous()), (ValueError, "paged_kv_cache")),
        ("cache-head-dim-32", lambda a: dict(cache=a["cache"][..., :32].contiguous()), (ValueError, "paged_kv_cache")),
        ("cache-last-dim-strided", lambda a: dict(cache=torch.cat([a["cache"], a["cache"]], -1)[..., ::2]),
         (ValueError, "paged_kv_cache: the last dimension must be contiguous")),
        ("cache-tuple-pages-differ", lambda a: dict(cache=(a["cache"][:, 0], a["cache"][:3, 1])),
         (ValueError, "k_cache .* and v_cache .* differ")),
        ("cache-tuple-v-dtype", lambda a: dict(cache=(a["cache"][:, 0], a["cache"][:, 1].float())),
         (TypeError, r"paged_kv_cache\[1\] \(v_cache\)")),
        ("cache-3-tuple", lambda a: dict(cache=(a["cache"][:, 0], a["cache"][:, 1], a["cache"][:, 1])),
         (ValueError, "a tuple must be")),
        ("cache-too-few-pages", _TOO_FEW_PAGES, (ValueError, f"{pages}: page id")),
        ("out-head-dim", lambda a: dict(out=h(n, AQ, 32)), (ValueError, "out: expected shape")),
        ("out-heads", lambda a: dict(out=h(n, AQ + 1, AD)), (ValueError, "out: expected shape")),
        ("out-float32", lambda a: dict(out=h(n, AQ, AD).float()), (TypeError, "out: expected dtype")),
        ("out-last-dim-strided", lambda a: dict(out=h(n, AQ, 2 * AD)[..., ::2]),
         (ValueError, "out: the last dimension must be contiguous")),
        ("lse-heads", lambda a: dict(lse=torch.empty(n, AQ - 1, device=DEVICE)), (ValueError, "lse: expected")),
        ("lse-float16", lambda a: dict(lse=h(n, AQ)), (TypeError, "lse: expected dtype float32")),
        ("lse-strided", lambda a: dict(lse=torch.empty(n, 2 * AQ, device=DEVICE)[:, ::2]),
         (ValueError, "lse: expected a contiguous")),
        ("lse-transposed", lambda a: dict(lse=torch.empty(AQ, n, device=DEVICE).t()),
         (ValueError, "lse: expected a contiguous")),
        ("sinks-short", lambda a: dict(sinks=torch.zeros(AQ - 1, device=DEVICE)), (ValueError, "sinks")),
    ]


@pytest.mark.parametrize("kind,mutate,expect", _attention_rows())
def test_attention_run_errors(kind, mutate, expect):
    a = _attn_args(kind)
    w = _attn_wrapper(a)
    w.run(a["q"], a["cache"])  # the planned call itself is fine
    bad = mutate(a)
    if mutate is _TOO_FEW_PAGES and a["indices"].device.type != "cpu":
        pytest.skip("device page ids are not read in the default mode (as FlashInfer); checked mode catches "
                    "ids past the cache (test_value_checked_mode_names_argument_and_element)")
    kw = {k: bad[k] for k in ("out", "lse", "sinks") if k in bad}
    with pytest.raises(expect[0], match=expect[1]):
        w.run(bad.get("q", a["q"]), bad.get("cache", a["cache"]), **kw)


@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_attention_run_strided_views_give_reference(kind):
    """Views with a contiguous last dimension are read through their strides: a q with strided
    heads, an out transposed in its first two dimensions, the (k, v) tuple of cache views."""
    from tests.reference.attention import attention_ref

    a = _attn_args(kind)
    w = _attn_wrapper(a)
    n = a["q"].shape[0]
    q = torch.stack([a["q"], torch.zeros_like(a["q"])], 2).flatten(1, 2)[:, ::2]  # heads at stride 2 * AD
    assert torch.equal(q, a["q"]) and not q.is_contiguous()
    out = torch.full((AQ, n, AD), float("nan"), dtype=torch.float16, device=DEVICE).transpose(0, 1)
    lse = torch.full((n, AQ), float("nan"), device=DEVICE)
    w.run(q, (a["cache"][:, 0], a["cache"][:, 1]), out=out, lse=lse)
    start = 0
    for b, m in enumerate(a["qo"]):
        rows = slice(start, start + m)
        start += m
        causal = kind == "prefill"
        ref, ref_lse = attention_ref(a["q"][rows], a["ks"][b], a["vs"][b], causal=causal)
        low, low_lse = attention_ref(a["q"][rows], a["ks"][b], a["vs"][b], causal=causal, compute_dtype=torch.float16)
        assert_close_to_reference(out[rows], ref, low, name=f"out[{b}]")
        assert_close_to_reference(lse[rows], ref_lse, low_lse, name=f"lse[{b}]")


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

