"""flashinfer_triton.sampling against float64 references: exact kept sets and values for the
filters, renormalizations and top_k; samplers checked draw by draw against the inverse CDF of the
reference distribution and statistically with a bound that detects a 0.05 error in any kept
probability; seed/offset reproducibility; CUDA-graph replay with new offsets.

Every random input comes from a generator with the fixed seed named in the test (``_data``)."""

import dataclasses
import math

import pytest
import torch

import flashinfer_triton.sampling as S
from flashinfer_triton.kernels import sampling as K
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, requires_gpu
from tests.reference import sampling as R

# 1000: one program per row on the CPU tier; 3001: two programs per row (split path). Rows of at most
# K.LARGE.sample entries are collected whole; ESTIMATE_VOCAB runs the bracket estimate (5 programs a row).
VOCABS = gpu_or_cpu([1000, 3001], [3001, 128256])
ESTIMATE_VOCAB = gpu_or_cpu(9001, 151936)
BATCH = 4


def _gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=_gen(seed), device=DEVICE) * scale


def _probs(rows, vocab, scale=2.0, seed=0, zeros=0.0):
    g = _gen(seed)
    x = torch.randn(rows, vocab, generator=g, device=DEVICE) * scale
    if zeros:
        x[torch.rand(rows, vocab, generator=g, device=DEVICE) < zeros] = float("-inf")
    return torch.softmax(x, -1)


@pytest.fixture
def poisoned_allocations(monkeypatch):
    """Every torch.empty / torch.empty_like (outputs and kernel workspaces) starts as NaN (floats),
    -7 (ints) or True: an element a kernel reads before writing, or never writes, shows."""
    empty, empty_like = torch.empty, torch.empty_like

    def fill(t):
        if t.dtype.is_floating_point:
            return t.fill_(float("nan"))
        return t.fill_(True if t.dtype == torch.bool else -7)

    monkeypatch.setattr(torch, "empty", lambda *a, **k: fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: fill(empty_like(*a, **k)))


# ------------------------------------------------------------------------------------------------
# softmax, masks, renormalizations, top_k: exact kept sets, values against float64
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", LOW_DTYPES + [torch.float32] if ON_GPU else LOW_DTYPES)
@pytest.mark.parametrize("temp", ["none", "scalar", "tensor"])
def test_softmax(vocab, dtype, temp, poisoned_allocations):
    logits = _randn((BATCH, vocab), seed=1, scale=3).to(dtype)
    t = {"none": None, "scalar": 0.7, "tensor": torch.rand(BATCH, generator=_gen(2), device=DEVICE) + 0.3}[temp]
    out = S.softmax(logits, t)
    assert out.dtype == torch.float32 and out.shape == logits.shape
    ref = R.softmax(logits, t)
    ref_lp = R.softmax(logits.float(), t.float() if isinstance(t, torch.Tensor) else t, dtype=torch.float32)
    assert_close_to_reference(out, ref, ref_lp, "softmax")


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype,ties", [(LOW_DTYPES[0], True), (torch.float32, False)] +
                         ([(LOW_DTYPES[1], False)] if ON_GPU else []))
def test_top_k_mask_logits(vocab, dtype, ties, poisoned_allocations):
    logits = _randn((BATCH, vocab), seed=3, scale=3)
    if ties:  # few distinct values: the k-th value is shared by many entries, all kept
        logits = logits.round()
    logits = logits.to(dtype)
    for top_k in (1, 50, torch.tensor([1, 7, vocab, 0], device=DEVICE, dtype=torch.int32)):
        out = S.top_k_mask_logits(logits, top_k)
        assert out.dtype == dtype
        ref = R.top_k_mask_logits(logits, top_k)
        assert torch.equal(torch.isinf(out), torch.isinf(ref)), f"top_k={top_k}: kept sets differ"
        assert torch.equal(out.double(), ref), f"top_k={top_k}: kept values changed"
        kept = (~torch.isinf(out)).sum(-1)
        ks = top_k if isinstance(top_k, torch.Tensor) else torch.full((BATCH,), top_k, device=DEVICE)
        ks = torch.where((ks <= 0) | (ks >= vocab), vocab, ks)
        assert (kept >= ks).all()  # more than k only through ties at the k-th value (checked above)


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", [torch.float32] + LOW_DTYPES[:1])
def test_top_k_renorm_probs(vocab, dtype, poisoned_allocations):
    probs = _probs(BATCH, vocab, zeros=0.3, seed=4).to(dtype)
    probs[0, :5] = probs[0, 5]  # ties at a large value
    for top_k in (3, torch.tensor([1, 100, vocab, 2000], device=DEVICE)):
        out = S.top_k_renorm_probs(probs, top_k)
        assert out.dtype == dtype
        ref = R.top_k_renorm_probs(probs, top_k)
        assert torch.equal(out > 0, ref > 0), "kept sets differ"
        assert_close_to_reference(out, ref, ref.to(dtype), "top_k_renorm_probs")


@pytest.mark.parametrize("vocab", VOCABS)
def test_top_p_renorm_probs(vocab, poisoned_allocations):
    probs = _probs(BATCH, vocab, zeros=0.2, seed=5)
    for top_p in (0.5, torch.tensor([0.1, 0.6, 0.95, 1.0], device=DEVICE)):
        out = S.top_p_renorm_probs(probs, top_p)
        assert out.dtype == torch.float32
        ref = R.top_p_renorm_probs(probs, top_p)
        assert torch.equal(out > 0, ref > 0), f"top_p={top_p}: kept sets differ"
        assert_close_to_reference(out, ref, ref.float(), "top_p_renorm_probs")


def test_top_p_renorm_ties():
    probs = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25, 0.0]], device=DEVICE)
    out = S.top_p_renorm_probs(probs, 0.45)
    # 0.3 alone < 0.45; adding the 0.2 tier keeps all three 0.2 entries (ties kept)
    assert torch.equal(out > 0, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], device=DEVICE, dtype=torch.bool))
    torch.testing.assert_close(out[0], torch.tensor([1 / 3, 2 / 9, 2 / 9, 2 / 9, 0.0], device=DEVICE))


@pytest.mark.parametrize("vocab,dtype", [(v, d) for v in VOCABS for d in LOW_DTYPES] if ON_GPU else
                         [(VOCABS[0], torch.float32), (VOCABS[1], torch.float16)])
def test_top_k(vocab, dtype, poisoned_allocations):
    x = _randn((BATCH, vocab), seed=6, scale=3).to(dtype)
    x[1] = x[1].round()  # many ties at the k-th value
    for k, tie in ((1, S.TopKTieBreak.NONE), (37, S.TopKTieBreak.SMALL), (37, S.TopKTieBreak.LARGE), (vocab, 0)):
        values, indices = S.top_k(x, k, tie_break=tie)
        assert values.dtype == dtype and indices.dtype == torch.int64 and values.shape == (BATCH, k)
        want = R.top_k_indices(x, k, tie_large=tie == S.TopKTieBreak.LARGE)
        assert torch.equal(indices, want), f"k={k} tie_break={tie}: indices differ"
        assert torch.equal(values, torch.gather(x, 1, want))
        values_s, indices_s = S.top_k(x, k, sorted=True, tie_break=tie)
        assert torch.equal(values_s, torch.topk(x.float(), k).values.to(dtype)), f"k={k}: sorted values differ"
        assert torch.equal(torch.gather(x, 1, indices_s), values_s)


# A small configuration (through the launchers' config= hook) makes the bracket estimate run at a
# vocabulary the interpreter streams quickly, with a capacity these rows can overflow.
PATH_CFG = dataclasses.replace(K.LARGE, block=128, search_block=128, cap=512, sample=256, bins=32, split_max=4)
PATH_VOCAB = 1500


def _path_rows():
    """Logits whose rows take the four resolve paths: (0) the bracket estimate misses, since the
    20 largest entries sit in the sample's segments (16 of sample / 16 entries at a stride of
    vocab // 16) and 700 entries just below them outside it (more than CAP, so a top-p bracket's
    floor at about CAP / 4 entries above t_lo does not rescue it either); (1) a bracket (the kept set is too big
    to collect whole); (2) no filter; (3) the kept set collected whole."""
    v = PATH_VOCAB
    stride, seg = v // 16, PATH_CFG.sample // 16
    heavy = torch.tensor([i for i in range(v) if i % stride < seg][:20], device=DEVICE)
    outside = torch.tensor([i for i in range(v) if i % stride >= seg][:700], device=DEVICE)
    row0 = _randn((v,), seed=7, scale=0.1)
    row0[heavy] = 6.0 + _randn((20,), seed=8, scale=0.1)
    row0[outside] = 4.0 + _randn((700,), seed=9, scale=0.1)
    logits = torch.stack([row0, _randn((v,), seed=10), _randn((v,), seed=11, scale=3), _randn((v,), seed=12, scale=3)])
    k = torch.tensor([40, 200, v, 30], device=DEVICE, dtype=torch.int32)
    p = torch.tensor([0.5, 0.9, 1.0, 0.7], device=DEVICE)
    return logits, k, p


@pytest.mark.parametrize("split", [1, 3])
def test_resolve_paths(split, poisoned_allocations):
    """Every resolve path (fallback, bracket, no filter, candidates; the row rewrite in the resolve
    kernel with split 1 and in the apply kernel with split 3) against the references: filters and
    top_k exact, samplers on the inverse CDF of their uniforms."""
    logits, k, p = _path_rows()
    probs = torch.softmax(logits, -1)
    fb, br, none, cand = K.PATH_FALLBACK, K.PATH_BRACKET, K.PATH_NONE, K.PATH_CANDIDATES
    kw = dict(config=PATH_CFG, split=split, with_paths=True)
    out, paths = S._launch_filter(logits, k, 0, None, 1.0, 2, 0, K.OP_MASK, **kw)
    assert paths.tolist() == [fb, br, none, cand]
    assert torch.equal(out.double(), R.top_k_mask_logits(logits, k))
    out, paths = S._launch_filter(probs, k, 0, None, 1.0, 2, 0, K.OP_RENORM, **kw)
    assert paths.tolist() == [fb, br, none, cand]
    assert_close_to_reference(out, R.top_k_renorm_probs(probs, k), R.top_k_renorm_probs(probs, k).float(), "renorm k")
    out, paths = S._launch_filter(probs, None, 0, p, 0.0, 0, 2, K.OP_RENORM, **kw)
    assert paths.tolist() == [fb, br, none, cand]
    ref = R.top_p_renorm_probs(probs, p)
    assert torch.equal(out > 0, ref > 0)
    assert_close_to_reference(out, ref, ref.float(), "renorm p")
    values, indices, paths = S._launch_top_k(logits, 40, False, **kw)
    assert paths.tolist() == [fb, cand, cand, cand]
    assert torch.equal(indices, R.top_k_indices(logits, 40)) and torch.equal(values, torch.gather(logits, 1, indices))
    if split > 1:  # the split samplers run in test_sampling_inverse_cdf (vocab 3001)
        return
    u = torch.rand((4, 1), generator=_gen(13), device=DEVICE)
    for name, (k_arr, p_arr, mode_k, mode_p, joint, want) in {
        "top_k": (k, None, 2, 0, False, [fb, br, none, cand]),
        "top_p": (None, p, 0, 2, False, [fb, br, none, cand]),
        "top_k_top_p": (k, p, 2, 2, False, [fb, cand, none, cand]),
        "top_k_top_p_joint": (k, p, 2, 2, True, [fb, cand, none, cand]),
    }.items():
        samples, valid, paths = S._launch_sample(probs, None, k_arr, 0, p_arr, 1.0, None, 0.0, mode_k, mode_p, 0, joint,
                                                 False, u, None, 0, None, 0, **kw)
        assert paths.tolist() == want, name
        ref = dict(top_k=k_arr, top_p=p_arr, joint=joint)
        dist, keep = R.sampling_target(probs, **{a: b for a, b in ref.items() if b is not None and b is not False})
        assert keep[torch.arange(4, device=DEVICE), samples.long()].all() and valid.all(), name
        assert R.inverse_cdf_consistent(dist, u[:, 0], samples).all(), name


@pytest.mark.parametrize("split", [1, 3])
def test_stored_candidates_path(split, poisoned_allocations):
    """A bracket that holds s* with more candidates than CAP (flat rows: many entries near the
    threshold) resolves over the candidates the pass stored (``K.PATH_STORED``) for one filter,
    k or p, in every op: the same answers as the references."""
    v = PATH_VOCAB
    logits = torch.stack([_randn((v,), seed=30 + i, scale=sc) for i, sc in enumerate((0.05, 0.2, 0.5))])
    print(f"seeds 30..32, vocab {v}, split {split}")
    probs = torch.softmax(logits, -1)
    k = torch.full((3,), 700, device=DEVICE, dtype=torch.int32)
    p = torch.full((3,), 0.5, device=DEVICE)
    kw = dict(config=PATH_CFG, split=split, with_paths=True)
    seen = set()
    out, paths = S._launch_filter(probs, k, 0, None, 1.0, 2, 0, K.OP_RENORM, **kw)
    seen |= set(paths.tolist())
    ref = R.top_k_renorm_probs(probs, k)
    assert torch.equal(out > 0, ref > 0)
    assert_close_to_reference(out, ref, ref.float(), "renorm k")
    out, paths = S._launch_filter(probs, None, 0, p, 0.0, 0, 2, K.OP_RENORM, **kw)
    seen |= set(paths.tolist())
    ref = R.top_p_renorm_probs(probs, p)
    assert torch.equal(out > 0, ref > 0)
    assert_close_to_reference(out, ref, ref.float(), "renorm p")
    out, paths = S._launch_filter(logits, k, 0, None, 1.0, 2, 0, K.OP_MASK, **kw)
    seen |= set(paths.tolist())
    assert torch.equal(out.double(), R.top_k_mask_logits(logits, k))
    values, indices, paths = S._launch_top_k(logits, 700, False, **kw)
    seen |= set(paths.tolist())
    assert torch.equal(indices, R.top_k_indices(logits, 700)) and torch.equal(values, torch.gather(logits, 1, indices))
    u = torch.rand((3, 1), generator=_gen(13), device=DEVICE)
    for name, (k_arr, p_arr, mode_k, mode_p) in {"top_k": (k, None, 2, 0), "top_p": (None, p, 0, 2)}.items():
        for x, is_logits in ((probs, False), (logits, True)):
            samples, valid, paths = S._launch_sample(x, None, k_arr, 0, p_arr, 1.0, None, 0.0, mode_k, mode_p, 0,
                                                     False, is_logits, u, None, 0, None, 0, **kw)
            seen |= set(paths.tolist())
            dist, keep = R.sampling_target(probs, **({"top_k": k_arr} if k_arr is not None else {"top_p": p_arr}))
            assert keep[torch.arange(3, device=DEVICE), samples.long()].all() and valid.all(), name
            assert R.inverse_cdf_consistent(dist, u[:, 0], samples).all(), name
    assert K.PATH_STORED in seen, seen


def test_small_top_p_set_collected_whole(poisoned_allocations):
    """A small top-p set the sample underestimates (20 heavy entries in the sample's segments, 60
    just below them outside it): the bracket's floor at about CAP / 4 entries above t_lo collects
    it whole (it missed before, and a miss costs the whole-row fallback); the same answers."""
    v = PATH_VOCAB
    stride, seg = v // 16, PATH_CFG.sample // 16
    heavy = torch.tensor([i for i in range(v) if i % stride < seg][:20], device=DEVICE)
    outside = torch.tensor([i for i in range(v) if i % stride >= seg][:60], device=DEVICE)
    row = _randn((v,), seed=40, scale=0.1)
    row[heavy] = 6.0
    row[outside] = 5.0 + _randn((60,), seed=41, scale=0.1)
    logits = torch.stack([row, row.flip(0)])
    probs = torch.softmax(logits, -1)
    p = torch.full((2,), 0.7, device=DEVICE)
    out, paths = S._launch_filter(probs, None, 0, p, 0.0, 0, 2, K.OP_RENORM, config=PATH_CFG, split=3, with_paths=True)
    assert paths.tolist() == [K.PATH_CANDIDATES] * 2
    ref = R.top_p_renorm_probs(probs, p)
    assert torch.equal(out > 0, ref > 0)
    assert_close_to_reference(out, ref, ref.float(), "renorm p")
    u = torch.rand((2, 1), generator=_gen(42), device=DEVICE)
    for x, is_logits in ((probs, False), (logits, True)):
        samples, valid, paths = S._launch_sample(x, None, None, 0, p, 1.0, None, 0.0, 0, 2, 0, False, is_logits, u,
                                                 None, 0, None, 0, config=PATH_CFG, split=3, with_paths=True)
        assert paths.tolist() == [K.PATH_CANDIDATES] * 2
        dist, keep = R.sampling_target(probs, top_p=p)
        assert keep[torch.arange(2, device=DEVICE), samples.long()].all() and valid.all()
        assert R.inverse_cdf_consistent(dist, u[:, 0], samples).all()


@pytest.mark.parametrize("split", [3, 4])
def test_bracket_draw_streams_one_chunk(split, poisoned_allocations):
    """Samplers on a bracket row draw by streaming only the chunk where the kept weight passes u
    (the per-chunk kept weight from the partials and the candidates): 48 copies of the bracket
    row of ``_path_rows`` with 48 uniforms land in every chunk, each on the reference's inverse CDF."""
    logits, _, _ = _path_rows()
    batch = 48
    x = torch.softmax(logits, -1)[1:2].repeat(batch, 1)
    u = torch.rand((batch, 1), generator=_gen(5), device=DEVICE)
    p = torch.full((batch,), 0.9, device=DEVICE)
    k = torch.full((batch,), 200, device=DEVICE, dtype=torch.int32)
    for name, (k_arr, p_arr, mode_k, mode_p) in {"top_p": (None, p, 0, 2), "top_k": (k, None, 2, 0)}.items():
        samples, valid, paths = S._launch_sample(x, None, k_arr, 0, p_arr, 1.0, None, 0.0, mode_k, mode_p, 0, False,
                                                 False, u, None, 0, None, 0, config=PATH_CFG, split=split,
                                                 with_paths=True)
        assert set(paths.tolist()) == {K.PATH_BRACKET}, name
        dist, keep = R.sampling_target(x, **({"top_p": p_arr} if p_arr is not None else {"top_k": k_arr}))
        assert keep[torch.arange(batch, device=DEVICE), samples.long()].all() and valid.all(), name
        assert R.inverse_cdf_consistent(dist, u[:, 0], samples).all(), name
        assert len(set(samples.tolist())) > batch // 2, name  # the draws spread over the kept set


def test_count_fallback_thresholds(poisoned_allocations):
    """The count threshold of the fallback (the radix select over the whole row) at thresholds the
    bisection handled: ties at it, negative values, -0.0 next to +0.0, the row's extremes. The 20
    largest entries sit in the estimate's sample (as in ``_path_rows``), so every row misses."""
    v = PATH_VOCAB
    stride, seg = v // 16, PATH_CFG.sample // 16
    heavy = torch.tensor([i for i in range(v) if i % stride < seg][:20], device=DEVICE)
    outside = torch.tensor([i for i in range(v) if i % stride >= seg][:300], device=DEVICE)
    rows = []
    for shift in (0.0, -10.0, -4.0):  # the threshold at 4.0, -6.0 (every entry negative) and 0.0
        row = _randn((v,), seed=20, scale=0.1) - 10.0 + shift
        row[heavy] = 6.0 + shift
        row[outside] = 4.0 + shift  # 300 entries tied just below the sample's top-k estimate
        rows.append(row)
    rows[2][outside[::2]] = -0.0  # ties between -0.0 and +0.0 at the threshold
    logits = torch.stack(rows)
    for k, tie in ((40, False), (40, True), (319, False), (320, True), (321, False)):
        values, indices, paths = S._launch_top_k(logits, k, tie, config=PATH_CFG, split=3, with_paths=True)
        assert paths.tolist() == [K.PATH_FALLBACK] * 3, k
        assert torch.equal(indices, R.top_k_indices(logits, k, tie_large=tie)), f"k={k} tie_large={tie}"
        assert torch.equal(values, torch.gather(logits, 1, indices))
        out, paths = S._launch_filter(logits, None, k, None, 1.0, 1, 0, K.OP_MASK, config=PATH_CFG, split=3,
                                      with_paths=True)
        assert paths.tolist() == [K.PATH_FALLBACK] * 3, k
        assert torch.equal(out.double(), R.top_k_mask_logits(logits, k)), f"mask k={k}"


# ------------------------------------------------------------------------------------------------
# samplers: every draw on the inverse CDF of the reference distribution
# ------------------------------------------------------------------------------------------------


def _check_inverse_cdf(samples, seed, x, kw, indices=None):
    """``samples`` were drawn with ``generator=_gen(seed)``: one torch.rand uniform per output
    row; each must sit where the reference distribution's CDF (index order) passes it."""
    u = torch.rand((samples.shape[0], 1), generator=_gen(seed), device=DEVICE)[:, 0]
    rows = x if indices is None else x[indices.long()]
    dist, keep = R.sampling_target(rows, **kw)
    assert keep[torch.arange(rows.shape[0], device=DEVICE), samples.long()].all(), f"seed {seed}: outside the kept set"
    if not kw:  # plain sampling from probabilities: u against the running sum (FlashInfer's contract),
        # redrawn as (u - T) / (1 - T) * T when it lands beyond a row sum T < 1
        dist = rows.double().clamp_min(0)
        tot = dist.sum(-1)
        u = torch.where(u < tot, u.double(), (u - tot) / (1 - tot).clamp_min(1e-30) * tot)
    ok = R.inverse_cdf_consistent(dist, u, samples)
    assert ok.all(), f"seed {seed}: rows {torch.nonzero(~ok).flatten().tolist()} are not at the CDF crossing"


SAMPLERS = {
    "probs": (lambda x, i, g: S.sampling_from_probs(x, i, generator=g), {}),
    "logits": (lambda x, i, g: S.sampling_from_logits(x, i, generator=g), dict(is_logits=True)),
    "top_k": (lambda x, i, g: S.top_k_sampling_from_probs(x, 4, i, generator=g), dict(top_k=4)),
    "top_p": (lambda x, i, g: S.top_p_sampling_from_probs(x, 0.6, i, generator=g), dict(top_p=0.6)),
    "min_p": (lambda x, i, g: S.min_p_sampling_from_probs(x, 0.2, i, generator=g), dict(min_p=0.2)),
    "top_k_top_p": (lambda x, i, g: S.top_k_top_p_sampling_from_probs(x, 6, 0.5, i, generator=g),
                    dict(top_k=6, top_p=0.5)),
    "top_k_top_p_joint": (lambda x, i, g: S.top_k_top_p_sampling_from_probs(x, 6, 0.5, i, "joint", generator=g),
                          dict(top_k=6, top_p=0.5, joint=True)),
    "logits_top_k_top_p": (lambda x, i, g: S.top_k_top_p_sampling_from_logits(x, 6, 0.5, i, generator=g),
                           dict(top_k=6, top_p=0.5, is_logits=True)),
    "logits_top_k_top_p_joint": (
        lambda x, i, g: S.top_k_top_p_sampling_from_logits(x, 4, 0.7, i, "joint", generator=g),
        dict(top_k=4, top_p=0.7, joint=True, is_logits=True)),
}


def _sampler_input(case, rows, vocab, seed):
    x = _randn((rows, vocab), seed=seed, scale=1.5)
    if not SAMPLERS[case][1].get("is_logits"):
        x = torch.softmax(x, -1)
        x[:, 3] = 0.0  # a zero-probability token is never sampled
    return x


# every sampler with the row split over programs; the single-program and estimate paths for a subset
INVERSE_CDF_CASES = [(VOCABS[1], c) for c in SAMPLERS] + [
    (VOCABS[0], c) for c in ("probs", "logits", "top_p", "top_k_top_p")] + [
    (ESTIMATE_VOCAB, c) for c in ("top_k", "top_p", "min_p", "top_k_top_p_joint", "logits_top_k_top_p")]


@pytest.mark.parametrize("vocab,case", INVERSE_CDF_CASES if not ON_GPU else
                         [(v, c) for v in VOCABS + [ESTIMATE_VOCAB] for c in SAMPLERS])
def test_sampling_inverse_cdf(case, vocab):
    """Large rows: one or more programs per row, collected whole or bracketed by the estimate."""
    fn, kw = SAMPLERS[case]
    x = _sampler_input(case, BATCH, vocab, seed=11)
    if not kw.get("is_logits"):
        x[1] *= 0.5  # an unnormalized row
    _check_inverse_cdf(fn(x, None, _gen(12)), 12, x, kw)


# ------------------------------------------------------------------------------------------------
# samplers: frequencies
# ------------------------------------------------------------------------------------------------

N_DRAWS = gpu_or_cpu(8192, 200000)
SMALL_V = 20
Z = 4.5


def _check_frequencies(samples, dist, keep, name):
    """Every sample in the kept set; |freq - p| <= 4.5 sigma + 1/N for every token. The test
    checks its own power: a token whose probability were off by 0.05 would land at least 3 sigma
    beyond that bound (so would fail with probability > 0.998)."""
    n = samples.numel()
    assert keep[samples.long()].all(), f"{name}: sample outside the allowed set"
    freq = torch.bincount(samples.long(), minlength=dist.numel()).double() / n
    sigma = torch.sqrt(dist * (1 - dist) / n)
    bound = Z * sigma + 1.0 / n
    sigma_off = torch.sqrt((dist + 0.05).clamp(max=1) * (1 - (dist + 0.05).clamp(max=1)) / n)
    assert (bound + 3 * torch.maximum(sigma, sigma_off) < 0.05).all(), f"{name}: {n} draws cannot detect 0.05"
    excess = (freq - dist).abs() - bound
    assert (excess <= 0).all(), f"{name}: frequencies off by {excess.max().item():.4f} beyond {Z} sigma"


@pytest.mark.parametrize("case", list(SAMPLERS))
def test_sampling_distribution(case):
    """N_DRAWS draws of one distribution (indices map every output row to row 0 of a 2-row input):
    frequencies, and each draw on the inverse CDF of its uniform."""
    fn, kw = SAMPLERS[case]
    x = _sampler_input(case, 2, SMALL_V, seed=13)
    idx = torch.zeros(N_DRAWS, dtype=torch.int64, device=DEVICE)
    samples = fn(x, idx, _gen(14))
    assert samples.dtype == torch.int64 and samples.shape == (N_DRAWS,)
    dist, keep = R.sampling_target(x[:1], **kw)
    _check_frequencies(samples, dist[0], keep[0], case)
    _check_inverse_cdf(samples, 14, x, kw, idx)


def test_per_row_parameters_and_indices():
    """Per-output top_k/top_p/min_p tensors with an indices map: each output in its own kept set,
    on the inverse CDF of its own distribution."""
    rows, reps = 3, gpu_or_cpu(200, 2000)
    probs = _probs(rows, 24, seed=15)
    indices = torch.arange(rows, device=DEVICE, dtype=torch.int32).repeat(reps)  # output i -> row i % 3
    batch = indices.numel()
    top_k = torch.tensor([1, 3, 10], device=DEVICE, dtype=torch.int32).repeat(reps)
    top_p = torch.tensor([0.9, 0.3, 0.8], device=DEVICE).repeat(reps)
    min_p = torch.tensor([0.5, 0.9, 0.1], device=DEVICE).repeat(reps)
    for order in ("top_k_first", "joint"):
        out = S.top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices, order, generator=_gen(16))
        assert out.dtype == torch.int32 and out.shape == (batch,)
        assert (out[0::rows] == probs[0].argmax()).all()  # top_k = 1 -> the argmax
        _check_inverse_cdf(out, 16, probs, dict(top_k=top_k, top_p=top_p, joint=order == "joint"), indices)
    _check_inverse_cdf(S.top_k_sampling_from_probs(probs, top_k, indices, generator=_gen(17)), 17, probs,
                       dict(top_k=top_k), indices)
    _check_inverse_cdf(S.min_p_sampling_from_probs(probs, min_p, indices, generator=_gen(18)), 18, probs,
                       dict(min_p=min_p), indices)


def test_tiny_kept_sets():
    """Nearly flat rows with top_k = 1 and a tiny top_p give the argmax; ties at the top-k
    threshold are all kept and all drawn."""
    vocab = gpu_or_cpu(3001, 128256)
    probs = torch.softmax(_randn((BATCH, vocab), seed=19, scale=0.01), -1)
    argmax = probs.argmax(-1)
    assert torch.equal(S.top_k_sampling_from_probs(probs, 1, generator=_gen(20)).long(), argmax)
    assert torch.equal(S.top_p_sampling_from_probs(probs, 1e-7, generator=_gen(21)).long(), argmax)
    assert torch.equal(S.top_k_top_p_sampling_from_logits(probs.log(), 1, 0.5, generator=_gen(22)).long(), argmax)
    tied = torch.full((1, 30), 0.5 / 26, device=DEVICE)
    tied[0, [5, 20, 23, 27]] = 0.125  # four tokens tie for the top; top_k = 2 keeps all four
    idx = torch.zeros(gpu_or_cpu(2000, 20000), dtype=torch.int32, device=DEVICE)
    s = S.top_k_sampling_from_probs(tied, 2, idx, generator=_gen(23)).long()
    assert set(s.unique().tolist()) == {5, 20, 23, 27}


def test_degenerate_rows():
    for vocab in (30, 50):  # the tiny and the large configuration
        probs = torch.zeros(3, vocab, device=DEVICE)
        probs[0, 17] = 1.0  # one token
        probs[1, 3] = probs[1, 29] = 0.5  # the last kept token, after rounding, is still valid
        s, valid = S.sampling_from_probs(probs, return_valid=True, generator=_gen(24))
        assert s[0] == 17 and s[1] in (3, 29) and valid.tolist() == [True, True, False]
        s, valid = S.top_k_sampling_from_probs(probs, 1, generator=_gen(24), return_valid=True)
        assert s[0] == 17 and valid.tolist() == [True, True, False]
        assert S.top_p_sampling_from_probs(probs[:1], 0.0, generator=_gen(24))[0] == 17


# ------------------------------------------------------------------------------------------------
# randomness: generator, seed / offset
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", [SMALL_V, VOCABS[0]])
def test_generator_and_seed_offset(vocab):
    """Same generator state or same (seed, offset): same samples; tensor and int forms agree;
    one seed per row equal to the scalar agrees; different offsets and seeds give new samples."""
    batch = gpu_or_cpu(512, 4096) if vocab <= 32 else BATCH
    probs = _probs(batch, vocab, seed=25)
    a = S.top_p_sampling_from_probs(probs, 0.95, generator=_gen(26))
    assert torch.equal(a, S.top_p_sampling_from_probs(probs, 0.95, generator=_gen(26)))
    fns = [lambda **kw: S.top_k_top_p_sampling_from_logits(probs.log(), 5, 0.9, **kw),
           lambda **kw: S.sampling_from_probs(probs, **kw)]
    for fn in fns[:2 if vocab <= 32 else 1]:
        a = fn(seed=42, offset=7)
        assert torch.equal(a, fn(seed=42, offset=7))
        t = dict(dtype=torch.int64, device=DEVICE)
        assert torch.equal(fn(seed=torch.tensor([42], **t), offset=torch.tensor([7], **t)), a), "tensor != int form"
        assert torch.equal(fn(seed=torch.full((batch,), 42, **t), offset=torch.full((batch,), 7, **t)), a)
        others = [fn(seed=42, offset=o) for o in (8, 9)] + [fn(seed=43, offset=7)]
        for b in others:
            frac = (a == b).float().mean().item()
            assert frac < (0.7 if batch > 8 else 1.0), f"new offset/seed repeated {frac:.0%} of the samples"
    if batch > 8:  # rows draw independently of each other
        s = fns[1](seed=1, offset=0)
        assert (s[1:] != s[:-1]).any()


# ------------------------------------------------------------------------------------------------
# chain speculative sampling
# ------------------------------------------------------------------------------------------------


def test_chain_speculative_example():
    draft = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.2, 0.3, 0.4, 0.1]]], device=DEVICE)
    ids = torch.tensor([[2, 1]], dtype=torch.int32, device=DEVICE)
    target = torch.tensor([[[0.0, 0.1, 0.6, 0.3], [1.0, 0.0, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]]], device=DEVICE)
    acc = torch.full((1,), 5, dtype=torch.int32, device=DEVICE)
    out, acc2, emit = S.chain_speculative_sampling(draft, ids, target, acc, generator=_gen(0))
    assert out.tolist() == [[2, 0, -1]] and acc2 is acc and acc.tolist() == [6] and emit.tolist() == [1]
    # everything accepted (target >= draft at the draft tokens): the bonus token comes from target[2]
    target2 = torch.tensor([[[0.0, 0.1, 0.6, 0.3], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]], device=DEVICE)
    out, acc, emit = S.chain_speculative_sampling(draft, ids.long(), target2, generator=_gen(0))
    assert out.tolist() == [[2, 1, 3]] and acc.tolist() == [2] and emit.tolist() == [2]
    a = S.chain_speculative_sampling(draft, ids, target, seed=3, offset=11)[0]
    b = S.chain_speculative_sampling(draft, ids, target, seed=torch.tensor([3], device=DEVICE),
                                     offset=torch.tensor([11], device=DEVICE))[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("vocab", [8, 40])
def test_chain_speculative_distribution(vocab):
    """The first emitted token is distributed as target[:, 0] whatever the draft (the point of
    speculative sampling); 40 runs the large configuration with fewer draws."""
    n = N_DRAWS if vocab <= 32 else gpu_or_cpu(64, 100000)
    spec = 2
    g = _gen(27)
    draft = torch.softmax(torch.randn(1, spec, vocab, generator=g, device=DEVICE) * 2, -1).expand(n, -1, -1)
    target = torch.softmax(torch.randn(1, spec + 1, vocab, generator=g, device=DEVICE) * 2, -1).expand(n, -1, -1)
    ids = torch.multinomial(draft[:, 0], 1, generator=g).to(torch.int32)
    ids = torch.cat([ids, torch.multinomial(draft[:, 1], 1, generator=g).to(torch.int32)], 1)
    out, acc, emit = S.chain_speculative_sampling(draft, ids, target, generator=_gen(28))
    assert out.shape == (n, spec + 1) and out.dtype == torch.int32
    assert ((emit >= 0) & (emit <= spec) & (acc >= emit)).all()
    pos = torch.arange(spec + 1, device=DEVICE)[None, :]
    assert torch.equal(out >= 0, pos <= emit[:, None].long()), "-1 padding after the sampled token"
    assert torch.equal(out[:, :spec][pos[:, :spec] < emit[:, None].long()],
                       ids[pos[:, :spec].expand(n, -1) < emit[:, None].long()])
    dist = R.chain_first_token_distribution(draft[:1], ids[:1], target[:1])[0]
    if n >= 4096:
        _check_frequencies(out[:, 0], dist, dist > 0, "chain first token")
    else:
        assert (dist[out[:, 0].long()] > 0).all()


# ------------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------------


def test_bad_inputs():
    probs = _probs(4, 32)
    with pytest.raises(TypeError, match="probs"):
        S.sampling_from_probs(probs.to(torch.int32))
    with pytest.raises(ValueError, match="probs"):
        S.sampling_from_probs(probs[0])
    with pytest.raises(ValueError, match="top_k"):
        S.top_k_sampling_from_probs(probs, torch.ones(3, dtype=torch.int32, device=DEVICE))
    with pytest.raises(TypeError, match="top_k"):
        S.top_k_sampling_from_probs(probs, torch.ones(4, device=DEVICE))
    with pytest.raises(TypeError, match="top_k"):
        S.top_k_renorm_probs(probs, 2.5)
    with pytest.raises(ValueError, match="top_p"):
        S.top_p_sampling_from_probs(probs, torch.ones(4, 1, device=DEVICE))
    with pytest.raises(ValueError, match="top_p"):
        S.top_p_renorm_probs(probs, torch.full((4,), 0.5, device="meta"))
    with pytest.raises(TypeError, match="indices"):
        S.sampling_from_probs(probs, torch.zeros(4, dtype=torch.float32, device=DEVICE))
    with pytest.raises(ValueError, match="indices"):
        S.sampling_from_probs(probs, torch.zeros(4, dtype=torch.int32, device="meta"))
    with pytest.raises(ValueError, match="filter_apply_order"):
        S.top_k_top_p_sampling_from_probs(probs, 3, 0.5, filter_apply_order="top_p_first")
    with pytest.raises(ValueError, match="seed and offset"):
        S.sampling_from_probs(probs, seed=1)
    with pytest.raises(ValueError, match="seed and offset"):
        S.sampling_from_probs(probs, seed=1, offset=torch.zeros(1, dtype=torch.int64, device=DEVICE))
    with pytest.raises(TypeError, match="seed"):
        S.sampling_from_probs(probs, seed=torch.zeros(1, device=DEVICE), offset=torch.zeros(1, device=DEVICE))
    with pytest.raises(ValueError, match="offset"):
        S.sampling_from_probs(probs, seed=torch.zeros(1, dtype=torch.int64, device=DEVICE),
                              offset=torch.zeros(3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="temperature"):
        S.softmax(probs, torch.ones(3, device=DEVICE))
    with pytest.raises(TypeError, match="generator"):
        S.sampling_from_probs(probs, generator=1234)
    nan = torch.full_like(probs, float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        S.sampling_from_probs(nan, check_nan=True)
    with pytest.raises(ValueError, match="NaN"):
        S.top_k_top_p_sampling_from_logits(nan, 3, 0.5, check_nan=True)
    assert S.sampling_from_probs(probs, check_nan=True, generator=_gen(0)).shape == (4,)
    with pytest.raises(ValueError, match="target_probs"):
        S.chain_speculative_sampling(probs[:, None], torch.zeros(4, 1, dtype=torch.int32, device=DEVICE),
                                     probs[:, None])
    with pytest.raises(ValueError, match="k: expected 1 <= k <= 32"):
        S.top_k(probs, 33)
    with pytest.raises(TypeError, match="k"):
        S.top_k(probs, 2.0)
    with pytest.raises(ValueError, match="tie_break"):
        S.top_k(probs, 2, tie_break=3)


# ------------------------------------------------------------------------------------------------
# GPU tier
# ------------------------------------------------------------------------------------------------


@requires_gpu
def test_torch_compile_fullgraph():
    logits = torch.randn(16, 32000, device=DEVICE, dtype=torch.bfloat16, generator=_gen(30))
    top_k = torch.full((16,), 50, device=DEVICE, dtype=torch.int32)
    seed = torch.tensor([5], device=DEVICE)
    offset = torch.tensor([9], device=DEVICE)

    def step(x, k):
        probs = S.softmax(x, 0.8)
        masked = S.top_k_mask_logits(x, k)
        s1 = S.top_k_top_p_sampling_from_logits(x, k, 0.9, seed=seed, offset=offset)
        s2 = S.top_p_sampling_from_probs(S.top_k_renorm_probs(probs, k), 0.9)
        values, indices = S.top_k(x, 8)
        return probs, masked, s1, s2, values, indices

    probs, masked, s1, s2, values, indices = torch.compile(step, fullgraph=True)(logits, top_k)
    torch.testing.assert_close(probs, S.softmax(logits, 0.8))
    assert torch.equal(masked, S.top_k_mask_logits(logits, top_k))
    assert torch.equal(s1, S.top_k_top_p_sampling_from_logits(logits, top_k, 0.9, seed=5, offset=9))
    keep = R.top_k_keep(logits, top_k)
    assert keep[torch.arange(16), s1.long()].all() and keep[torch.arange(16), s2.long()].all()
    assert torch.equal(indices, R.top_k_indices(logits, 8))


@requires_gpu
def test_cuda_graph_replay_with_new_offsets():
    """Sampling captured once with seed/offset tensors replays with the offsets written before
    each replay: every replay equals the eager call with those ints, and new offsets draw anew.
    The generator path also draws anew on every replay (torch advances it)."""
    batch, vocab = 64, 128256
    probs = _probs(batch, vocab, scale=3, seed=31)
    seed = torch.tensor([1234], device=DEVICE)
    offset = torch.zeros(1, dtype=torch.int64, device=DEVICE)

    def run():
        return (S.top_k_top_p_sampling_from_probs(probs, 50, 0.9, seed=seed, offset=offset),
                S.sampling_from_probs(probs, seed=seed, offset=offset),
                S.top_p_sampling_from_probs(probs, 0.9))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    seen = []
    for o in (0, 1, 2, 1000):
        offset.fill_(o)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out[0], S.top_k_top_p_sampling_from_probs(probs, 50, 0.9, seed=1234, offset=o))
        assert torch.equal(out[1], S.sampling_from_probs(probs, seed=1234, offset=o))
        seen.append([t.clone() for t in out])
    for i in range(3):
        assert any(not torch.equal(seen[0][i], s[i]) for s in seen[1:]), f"output {i}: replays repeat"


@requires_gpu
def test_large_vocab_bf16_logits_sampling():
    vocab, batch = 256000, 64
    logits = _randn((batch, vocab), seed=32, scale=3).to(torch.bfloat16)
    for k, p in ((1, 0.9), (50, 0.95), (1000, 0.5)):
        s = S.top_k_top_p_sampling_from_logits(logits, k, p, generator=_gen(k))
        keep = R.sampling_target(logits, top_k=k, top_p=p, is_logits=True)[1]
        assert keep[torch.arange(batch), s.long()].all()
        if k == 1:  # bf16 logits tie often at the top: any maximum is right (ties are kept)
            picked = logits.float()[torch.arange(batch, device=DEVICE), s.long()]
            assert torch.equal(picked, logits.float().amax(-1))
    assert math.isfinite(S.softmax(logits).sum().item())
