"""flashinfer_triton.sampling against float64 references: exact kept sets and values for the
filters and renormalizations, statistical checks for the samplers."""

import math

import pytest
import torch

import flashinfer_triton.sampling as S
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, requires_gpu
from tests.reference import sampling as R

VOCABS = gpu_or_cpu([1000, 3001], [3001, 128256])
BATCH = 5


def _gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _probs(rows, vocab, scale=2.0, seed=0, zeros=0.0):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g, device=DEVICE) * scale
    if zeros:
        x[torch.rand(rows, vocab, generator=g, device=DEVICE) < zeros] = float("-inf")
    return torch.softmax(x, -1)


# ------------------------------------------------------------------------------------------------
# softmax, masks, renormalizations: exact kept sets, values against float64
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", LOW_DTYPES + [torch.float32] if ON_GPU else LOW_DTYPES)
@pytest.mark.parametrize("temp", ["none", "scalar", "tensor"])
def test_softmax(vocab, dtype, temp):
    logits = (torch.randn(BATCH, vocab, device=DEVICE) * 3).to(dtype)
    t = {"none": None, "scalar": 0.7, "tensor": torch.rand(BATCH, device=DEVICE) + 0.3}[temp]
    out = S.softmax(logits, t)
    assert out.dtype == torch.float32 and out.shape == logits.shape
    ref = R.softmax(logits, t)
    ref_lp = R.softmax(logits.float(), t.float() if isinstance(t, torch.Tensor) else t, dtype=torch.float32)
    assert_close_to_reference(out, ref, ref_lp, "softmax")


@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_mask_logits(vocab, dtype, ties):
    logits = torch.randn(BATCH, vocab, device=DEVICE) * 3
    if ties:  # few distinct values: the k-th value is shared by many entries, all kept
        logits = logits.round()
    logits = logits.to(dtype)
    for top_k in (1, 50, torch.tensor([1, 7, 64, vocab, 0], device=DEVICE, dtype=torch.int32)):
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
def test_top_k_renorm_probs(vocab, dtype):
    probs = _probs(BATCH, vocab, zeros=0.3).to(dtype)
    probs[0, :5] = probs[0, 5]  # ties at a large value
    for top_k in (3, torch.tensor([1, 4, 100, vocab, 2000], device=DEVICE)):
        out = S.top_k_renorm_probs(probs, top_k)
        assert out.dtype == dtype
        ref = R.top_k_renorm_probs(probs, top_k)
        assert torch.equal(out > 0, ref > 0), "kept sets differ"
        ref_lp = R.top_k_renorm_probs(probs, top_k).to(dtype)
        assert_close_to_reference(out, ref, ref_lp, "top_k_renorm_probs")


@pytest.mark.parametrize("vocab", VOCABS)
def test_top_p_renorm_probs(vocab):
    probs = _probs(BATCH, vocab, zeros=0.2)
    for top_p in (0.5, 0.9, torch.tensor([0.1, 0.3, 0.6, 0.95, 1.0], device=DEVICE)):
        out = S.top_p_renorm_probs(probs, top_p)
        assert out.dtype == torch.float32
        ref = R.top_p_renorm_probs(probs, top_p)
        assert torch.equal(out > 0, ref > 0), f"top_p={top_p}: kept sets differ"
        # smallest set reaching top_p: without its smallest kept value the mass falls below top_p
        assert_close_to_reference(out, ref, ref.float(), "top_p_renorm_probs")


def test_top_p_renorm_ties():
    probs = torch.tensor([[0.3, 0.2, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25, 0.0]], device=DEVICE)
    out = S.top_p_renorm_probs(probs, 0.45)
    # 0.3 alone < 0.45; adding the 0.2 tier keeps all three 0.2 entries (ties kept)
    assert torch.equal(out > 0, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], device=DEVICE, dtype=torch.bool))
    torch.testing.assert_close(out[0], torch.tensor([1 / 3, 2 / 9, 2 / 9, 2 / 9, 0.0], device=DEVICE))


# ------------------------------------------------------------------------------------------------
# samplers: support and frequencies
# ------------------------------------------------------------------------------------------------

N_SAMPLES = gpu_or_cpu(400, 200000)
SMALL_V = 20

CASES = {
    "probs": dict(fn=lambda x, idx, g: S.sampling_from_probs(x, idx, generator=g), kw={}),
    "logits": dict(fn=lambda x, idx, g: S.sampling_from_logits(x, idx, generator=g), kw=dict(is_logits=True)),
    "top_k": dict(fn=lambda x, idx, g: S.top_k_sampling_from_probs(x, 4, idx, generator=g), kw=dict(top_k=4)),
    "top_p": dict(fn=lambda x, idx, g: S.top_p_sampling_from_probs(x, 0.6, idx, generator=g), kw=dict(top_p=0.6)),
    "min_p": dict(fn=lambda x, idx, g: S.min_p_sampling_from_probs(x, 0.2, idx, generator=g), kw=dict(min_p=0.2)),
    "top_k_top_p": dict(fn=lambda x, idx, g: S.top_k_top_p_sampling_from_probs(x, 6, 0.5, idx, generator=g),
                        kw=dict(top_k=6, top_p=0.5)),
    "top_k_top_p_joint": dict(
        fn=lambda x, idx, g: S.top_k_top_p_sampling_from_probs(x, 6, 0.5, idx, "joint", generator=g),
        kw=dict(top_k=6, top_p=0.5, joint=True)),
    "logits_top_k_top_p": dict(
        fn=lambda x, idx, g: S.top_k_top_p_sampling_from_logits(x, 6, 0.5, idx, generator=g),
        kw=dict(top_k=6, top_p=0.5, is_logits=True)),
    "logits_top_k_top_p_joint": dict(
        fn=lambda x, idx, g: S.top_k_top_p_sampling_from_logits(x, 4, 0.7, idx, "joint", generator=g),
        kw=dict(top_k=4, top_p=0.7, joint=True, is_logits=True)),
}


def _check_frequencies(samples, dist, keep, name):
    """Every sample in the kept set; max |freq - p| < 5 sigma (+ one sample) per token."""
    n = samples.numel()
    assert keep[samples.long()].all(), f"{name}: sample outside the allowed set"
    freq = torch.bincount(samples.long(), minlength=dist.numel()).double() / n
    sigma = torch.sqrt(dist * (1 - dist) / n)
    excess = (freq - dist).abs() - (5 * sigma + 1.0 / n)
    assert (excess <= 0).all(), f"{name}: frequencies off by {excess.max().item():.4f} beyond 5 sigma"


@pytest.mark.parametrize("case", list(CASES))
def test_sampling_distribution(case):
    """Many draws of one distribution (indices map every output row to row 0 of a 2-row input)."""
    c = CASES[case]
    x = torch.randn(2, SMALL_V, device=DEVICE) * 1.5
    if not c["kw"].get("is_logits"):
        x = torch.softmax(x, -1)
        x[0, 3] = 0.0  # a zero-probability token is never sampled
    idx = torch.zeros(N_SAMPLES, dtype=torch.int64, device=DEVICE)
    samples = c["fn"](x, idx, _gen(1))
    assert samples.dtype == torch.int64 and samples.shape == (N_SAMPLES,)
    dist, keep = R.sampling_target(x[:1], **c["kw"])
    _check_frequencies(samples, dist[0], keep[0], case)


def test_per_row_parameters_and_indices():
    """Per-output top_k/top_p tensors with an indices map: each output stays in its own kept set."""
    rows, reps = 3, gpu_or_cpu(40, 300)
    probs = _probs(rows, 64, seed=3)
    indices = torch.arange(rows, device=DEVICE, dtype=torch.int32).repeat(reps)  # output i -> row i % 3
    batch = indices.numel()
    top_k = torch.tensor([1, 3, 10], device=DEVICE, dtype=torch.int32).repeat(reps)
    top_p = torch.tensor([0.9, 0.3, 0.8], device=DEVICE).repeat(reps)
    for joint in ("top_k_first", "joint"):
        out = S.top_k_top_p_sampling_from_probs(probs, top_k, top_p, indices, joint, generator=_gen(2))
        assert out.dtype == torch.int32 and out.shape == (batch,)
        _, keep = R.sampling_target(probs[indices.long()], top_k=top_k, top_p=top_p, joint=joint == "joint")
        assert keep[torch.arange(batch, device=DEVICE), out.long()].all(), joint
        assert (out[0::rows] == probs[0].argmax()).all()  # top_k = 1 -> the argmax
    out = S.top_k_sampling_from_probs(probs, top_k, indices, generator=_gen(2))
    _, keep = R.sampling_target(probs[indices.long()], top_k=top_k)
    assert keep[torch.arange(batch, device=DEVICE), out.long()].all()
    out = S.min_p_sampling_from_probs(probs, torch.tensor([0.5, 0.9, 0.1], device=DEVICE).repeat(reps), indices)
    _, keep = R.sampling_target(probs[indices.long()], min_p=torch.tensor([0.5, 0.9, 0.1], device=DEVICE).repeat(reps))
    assert keep[torch.arange(batch, device=DEVICE), out.long()].all()


@pytest.mark.parametrize("vocab", VOCABS)
def test_sampling_support_large_rows(vocab):
    """Fresh rows over the full vocabulary: samples always inside the kept set, zeros never drawn."""
    probs = _probs(BATCH, vocab, zeros=0.5, seed=5)
    logits = torch.randn(BATCH, vocab, device=DEVICE) * 4
    for trial in range(2):
        g = _gen(10 + trial)
        s = S.top_k_top_p_sampling_from_probs(probs, 20, 0.8, generator=g)
        assert R.sampling_target(probs, top_k=20, top_p=0.8)[1][torch.arange(BATCH), s.long()].all()
        s = S.top_p_sampling_from_probs(probs, 0.3, generator=g)
        assert R.sampling_target(probs, top_p=0.3)[1][torch.arange(BATCH), s.long()].all()
        s = S.sampling_from_probs(probs, generator=g)
        assert (probs[torch.arange(BATCH), s.long()] > 0).all()
        s = S.top_k_top_p_sampling_from_logits(logits, 10, 0.9, generator=g)
        assert R.sampling_target(logits, top_k=10, top_p=0.9, is_logits=True)[1][torch.arange(BATCH), s.long()].all()


def test_generator_and_seed_reproducible():
    probs = _probs(8, 300, seed=7)
    a = S.top_p_sampling_from_probs(probs, 0.95, generator=_gen(123))
    b = S.top_p_sampling_from_probs(probs, 0.95, generator=_gen(123))
    assert torch.equal(a, b)
    draws = torch.stack([S.sampling_from_probs(probs, generator=_gen(s)) for s in range(4)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:]), "different seeds gave identical samples"
    a, va = S.sampling_from_probs(probs, seed=42, offset=7, return_valid=True)
    b = S.sampling_from_probs(probs, seed=42, offset=7)
    assert torch.equal(a, b) and va.all()
    seed = torch.tensor([42], dtype=torch.int64, device=DEVICE)
    offset = torch.tensor([7], dtype=torch.int64, device=DEVICE)
    assert torch.equal(S.sampling_from_probs(probs, seed=seed, offset=offset), a)  # tensor form = int form
    c = torch.stack([S.sampling_from_probs(probs, seed=42, offset=o) for o in range(8, 12)])
    assert not all(torch.equal(a, r) for r in c), "different offsets gave identical samples"


def test_rejection_many_rounds():
    """Nearly flat rows make the sampler reject many times before it lands in a tiny kept set:
    top_k = 1 and a tiny top_p must give the argmax; ties at the top-k threshold are all kept."""
    vocab = gpu_or_cpu(3001, 128256)
    probs = torch.softmax(torch.randn(BATCH, vocab, device=DEVICE) * 0.01, -1)
    argmax = probs.argmax(-1)
    for seed in range(3):
        assert torch.equal(S.top_k_sampling_from_probs(probs, 1, generator=_gen(seed)).long(), argmax)
        assert torch.equal(S.top_p_sampling_from_probs(probs, 1e-7, generator=_gen(seed)).long(), argmax)
        logits = probs.log()
        assert torch.equal(S.top_k_top_p_sampling_from_logits(logits, 1, 0.5, generator=_gen(seed)).long(), argmax)
    tied = torch.full((1, 64), 0.5 / 60, device=DEVICE)
    tied[0, [5, 20, 33, 40]] = 0.125  # four tokens tie for the top; top_k = 2 keeps all four
    idx = torch.zeros(gpu_or_cpu(200, 20000), dtype=torch.int32, device=DEVICE)
    s = S.top_k_sampling_from_probs(tied, 2, idx, generator=_gen(9)).long()
    assert set(s.unique().tolist()) <= {5, 20, 33, 40} and len(s.unique()) == 4


def test_degenerate_rows():
    probs = torch.zeros(3, 50, device=DEVICE)
    probs[0, 17] = 1.0  # one token
    probs[1, 3] = probs[1, 44] = 0.5  # the last kept token, after rounding, is still valid
    s, valid = S.sampling_from_probs(probs, return_valid=True, generator=_gen(0))
    assert s[0] == 17 and s[1] in (3, 44) and valid.tolist() == [True, True, False]
    assert S.top_k_sampling_from_probs(probs, 1, generator=_gen(0))[0] == 17
    assert S.top_p_sampling_from_probs(probs[:1], 0.0, generator=_gen(0))[0] == 17


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


def test_chain_speculative_distribution():
    """The first emitted token is distributed as target[:, 0] whatever the draft (the point of
    speculative sampling)."""
    n, vocab, spec = gpu_or_cpu(400, 100000), 8, 2
    g = torch.Generator(device=DEVICE).manual_seed(3)
    draft = torch.softmax(torch.randn(1, spec, vocab, generator=g, device=DEVICE) * 2, -1).expand(n, -1, -1)
    target = torch.softmax(torch.randn(1, spec + 1, vocab, generator=g, device=DEVICE) * 2, -1).expand(n, -1, -1)
    ids = torch.multinomial(draft[:, 0], 1, generator=g).to(torch.int32)
    ids = torch.cat([ids, torch.multinomial(draft[:, 1], 1, generator=g).to(torch.int32)], 1)
    out, acc, emit = S.chain_speculative_sampling(draft, ids, target, generator=_gen(4))
    assert out.shape == (n, spec + 1) and out.dtype == torch.int32
    assert ((emit >= 0) & (emit <= spec) & (acc >= emit)).all()
    pos = torch.arange(spec + 1, device=DEVICE)[None, :]
    assert torch.equal(out >= 0, pos <= emit[:, None].long()), "-1 padding after the sampled token"
    assert torch.equal(out[:, :spec][pos[:, :spec] < emit[:, None].long()],
                       ids[pos[:, :spec].expand(n, -1) < emit[:, None].long()])
    dist = R.chain_first_token_distribution(draft[:1], ids[:1], target[:1])[0]
    _check_frequencies(out[:, 0], dist, dist > 0, "chain first token")


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
    with pytest.raises(ValueError, match="temperature"):
        S.softmax(probs, torch.ones(3, device=DEVICE))
    with pytest.raises(TypeError, match="generator"):
        S.sampling_from_probs(probs, generator=1234)
    with pytest.raises(ValueError, match="NaN"):
        S.sampling_from_probs(torch.full_like(probs, float("nan")), check_nan=True)
    with pytest.raises(ValueError, match="target_probs"):
        S.chain_speculative_sampling(probs[:, None], torch.zeros(4, 1, dtype=torch.int32, device=DEVICE),
                                     probs[:, None])


# ------------------------------------------------------------------------------------------------
# GPU tier
# ------------------------------------------------------------------------------------------------


@requires_gpu
def test_torch_compile_fullgraph():
    logits = torch.randn(16, 32000, device=DEVICE, dtype=torch.bfloat16)
    top_k = torch.full((16,), 50, device=DEVICE, dtype=torch.int32)

    def step(x, k):
        probs = S.softmax(x, 0.8)
        masked = S.top_k_mask_logits(x, k)
        s1 = S.top_k_top_p_sampling_from_logits(x, k, 0.9)
        s2 = S.top_p_sampling_from_probs(S.top_k_renorm_probs(probs, k), 0.9)
        return probs, masked, s1, s2

    probs, masked, s1, s2 = torch.compile(step, fullgraph=True)(logits, top_k)
    torch.testing.assert_close(probs, S.softmax(logits, 0.8))
    assert torch.equal(masked, S.top_k_mask_logits(logits, top_k))
    keep = R.top_k_keep(logits, top_k)
    assert keep[torch.arange(16), s1.long()].all() and keep[torch.arange(16), s2.long()].all()


@requires_gpu
def test_large_vocab_bf16_logits_sampling():
    vocab, batch = 256000, 64
    logits = (torch.randn(batch, vocab, device=DEVICE) * 3).to(torch.bfloat16)
    for k, p in ((1, 0.9), (50, 0.95), (1000, 0.5)):
        s = S.top_k_top_p_sampling_from_logits(logits, k, p, generator=_gen(k))
        keep = R.sampling_target(logits, top_k=k, top_p=p, is_logits=True)[1]
        assert keep[torch.arange(batch), s.long()].all()
        if k == 1:  # bf16 logits tie often at the top: any maximum is right (ties are kept)
            picked = logits.float()[torch.arange(batch, device=DEVICE), s.long()]
            assert torch.equal(picked, logits.float().amax(-1))
    assert math.isfinite(S.softmax(logits).sum().item())
