"""merge_state, merge_state_in_place, merge_states against float64 references (base-2 LSE)."""

import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, requires_gpu
from tests.reference import page_cascade as ref

SEQ = gpu_or_cpu(7, 777)
SHAPES = [pytest.param(3, 64, id="h3_d64"), pytest.param(5, 40, id="h5_d40")] + (
    [pytest.param(32, 128, id="h32_d128"), pytest.param(16, 512, id="h16_d512")] if ON_GPU else [])


def _states(seq, n, h, d, dtype, empty_frac=0.2):
    """Random states; a fraction of (row, state, head) are empty (-inf, NaN v); row 0 all empty."""
    v = torch.randn(seq, n, h, d, device=DEVICE).to(dtype)
    s = torch.randn(seq, n, h, device=DEVICE) * 4
    empty = torch.rand(seq, n, h, device=DEVICE) < empty_frac
    empty[0] = True
    s[empty] = float("-inf")
    v[empty] = float("nan")  # an empty state's v must never be read into the sum
    return v, s


def _low_ref(v, s, dtype):
    out, lse = ref.merge_states(v, s, torch.float32)
    return out.to(dtype), lse


def _check(v_out, s_out, v, s, dtype):
    ref_v, ref_s = ref.merge_states(v, s)
    low_v, low_s = _low_ref(v, s, dtype)
    assert v_out.dtype == dtype and s_out.dtype == torch.float32
    assert_close_to_reference(v_out, ref_v, low_v, name="v")
    assert_close_to_reference(s_out, ref_s, low_s, name="s")
    assert torch.isneginf(s_out[0]).all() and (v_out[0] == 0).all()


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("h,d", SHAPES)
def test_merge_state(dtype, h, d):
    v, s = _states(SEQ, 2, h, d, dtype)
    # Non-contiguous inputs: slices of the stacked tensors.
    v_out, s_out = flashinfer.merge_state(v[:, 0], s[:, 0], v[:, 1], s[:, 1])
    assert v_out.shape == (SEQ, h, d) and s_out.shape == (SEQ, h)
    _check(v_out, s_out, v, s, dtype)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("use_mask", [False, True], ids=["nomask", "mask"])
def test_merge_state_in_place(dtype, use_mask):
    h, d = 3, 48
    v, s = _states(SEQ, 2, h, d, dtype)
    v_self, s_self = v[:, 0].clone(), s[:, 0].clone()
    v_self_before, s_self_before = v_self.clone(), s_self.clone()
    mask = None
    if use_mask:
        mask = torch.rand(SEQ, device=DEVICE) < 0.5
        mask[0] = True
        mask[1] = False
    flashinfer.merge_state_in_place(v_self, s_self, v[:, 1], s[:, 1], mask=mask)
    rows = torch.arange(SEQ, device=DEVICE) if mask is None else mask.nonzero()[:, 0]
    _check(v_self[rows], s_self[rows], v[rows], s[rows], dtype)
    if mask is not None:
        keep = ~mask
        assert torch.equal(v_self[keep].view(torch.uint8), v_self_before[keep].view(torch.uint8))
        assert torch.equal(s_self[keep].view(torch.uint8), s_self_before[keep].view(torch.uint8))


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("num_states", [1, 5, gpu_or_cpu(9, 100)])
def test_merge_states(dtype, num_states):
    h, d = (5, 40) if not ON_GPU else (32, 128)
    v, s = _states(SEQ, num_states, h, d, dtype)
    v_out, s_out = flashinfer.merge_states(v, s)
    assert v_out.shape == (SEQ, h, d) and s_out.shape == (SEQ, h)
    _check(v_out, s_out, v, s, dtype)


def test_merge_states_matches_merge_state_and_lse_base2():
    """Merging two halves of a softmax gives the whole: checks the base-2 convention end to end."""
    seq, h, d, n = 3, 2, 16, 11
    logits = torch.randn(seq, h, n, dtype=torch.float64, device=DEVICE)
    vals = torch.randn(n, d, dtype=torch.float64, device=DEVICE)
    lse2 = lambda x: torch.logsumexp(x, -1) / torch.log(torch.tensor(2.0, dtype=torch.float64))  # noqa: E731
    def part(sl):
        return (torch.softmax(logits[..., sl], -1) @ vals[sl]).float(), lse2(logits[..., sl]).float()
    (va, sa), (vb, sb) = part(slice(0, 4)), part(slice(4, n))
    v_all, s_all = part(slice(0, n))
    v1, s1 = flashinfer.merge_state(va, sa, vb, sb)
    v2, s2 = flashinfer.merge_states(torch.stack([va, vb], 1), torch.stack([sa, sb], 1))
    for vo, so in ((v1, s1), (v2, s2)):
        torch.testing.assert_close(vo, v_all, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(so, s_all, atol=1e-5, rtol=1e-5)


def test_merge_states_zero_states():
    v = torch.randn(3, 0, 2, 16, device=DEVICE)
    s = torch.randn(3, 0, 2, device=DEVICE)
    v_out, s_out = flashinfer.merge_states(v, s)
    assert (v_out == 0).all() and torch.isneginf(s_out).all()


def test_merge_errors():
    v = torch.randn(4, 2, 16, device=DEVICE)
    s = torch.randn(4, 2, device=DEVICE)
    with pytest.raises(TypeError, match="s_a"):
        flashinfer.merge_state(v, s.int(), v, s)
    with pytest.raises(ValueError, match="s_b"):
        flashinfer.merge_state(v, s, v, s[:3])
    with pytest.raises(ValueError, match="v_b"):
        flashinfer.merge_state(v, s, v.half(), s)
    with pytest.raises(TypeError, match="v_a"):
        flashinfer.merge_state(v.int(), s, v, s)
    with pytest.raises(TypeError, match="s: expected dtype float32"):
        flashinfer.merge_state_in_place(v, s.double(), v, s)
    with pytest.raises(TypeError, match="mask"):
        flashinfer.merge_state_in_place(v, s, v, s, mask=torch.ones(4, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="mask"):
        flashinfer.merge_state_in_place(v, s, v, s, mask=torch.ones(5, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="v: the last dimension"):
        flashinfer.merge_state_in_place(v.transpose(1, 2), s, v.transpose(1, 2), s)
    with pytest.raises(ValueError, match="v: expected a 4-D"):
        flashinfer.merge_states(v, s)
    with pytest.raises(NotImplementedError, match="head_dim"):
        flashinfer.merge_states(torch.randn(1, 1, 1, 600, device=DEVICE), torch.randn(1, 1, 1, device=DEVICE))


def test_merge_compile_and_opcheck():
    """The torch.library ops: fake impls and schemas (opcheck), and a fullgraph trace through them."""
    from flashinfer_triton.attention import merge as cascade

    v, s = _states(3, 3, 2, 16, torch.float32, empty_frac=0.0)
    torch.library.opcheck(cascade.merge_states_op, (v, s), test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(cascade.merge_state_op, (v[:, 0], s[:, 0], v[:, 1], s[:, 1]), test_utils=("test_schema", "test_faketensor"))
    vi, si = v[:, 0].clone(), s[:, 0].clone()
    torch.library.opcheck(cascade.merge_state_in_place_op, (vi, si, v[:, 1], s[:, 1], None),
                          test_utils=("test_schema", "test_faketensor"))

    def f(v, s, va, sa):
        vm, sm = flashinfer.merge_states(v, s)
        flashinfer.merge_state_in_place(va, sa, vm, sm)
        return flashinfer.merge_state(va, sa, vm, sm)

    va, sa = v[:, 0].clone(), s[:, 0].clone()
    va2, sa2 = va.clone(), sa.clone()
    backend = "inductor" if ON_GPU else "aot_eager"
    got = torch.compile(f, fullgraph=True, backend=backend)(v, s, va, sa)
    want = f(v, s, va2, sa2)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(va, va2)
    torch.testing.assert_close(sa, sa2)


@requires_gpu
def test_merge_device_mismatch():
    v = torch.randn(4, 2, 16, device=DEVICE)
    s = torch.randn(4, 2, device=DEVICE)
    with pytest.raises(ValueError, match="s_b"):
        flashinfer.merge_state(v, s, v, s.cpu())
    with pytest.raises(ValueError, match="v_a"):
        flashinfer.merge_state(v.cpu(), s.cpu(), v.cpu(), s.cpu())


@pytest.mark.parametrize("kind", ["nan", "posinf", "posinf_pair"])
def test_non_finite_states_follow_the_reference(kind):
    """A NaN LSE propagates (NaN v and s), +inf dominates (v = mean of the +inf states, s = +inf);
    -inf stays an empty state. merge_state, merge_state_in_place and merge_states agree."""
    dtype = LOW_DTYPES[0]
    v, s = _states(SEQ, 3, 2, 32, dtype, empty_frac=0.0)
    v = v.clone()
    s = s.clone()
    s[1, 0, 1] = float("nan") if kind == "nan" else float("inf")
    if kind == "posinf_pair":
        s[1, 2, 1] = float("inf")
    s[2, 1, 0] = float("-inf")
    ref_v, ref_s = ref.merge_states(v, s)
    out_v, out_s = flashinfer.merge_states(v, s)
    # The rows of the non-finite state match the reference exactly in kind (NaN, +inf), and in value.
    assert torch.equal(torch.isnan(out_s), torch.isnan(ref_s)) and torch.equal(torch.isposinf(out_s), torch.isposinf(ref_s))
    assert torch.equal(torch.isnan(out_v), torch.isnan(ref_v))
    finite = torch.isfinite(ref_v)
    torch.testing.assert_close(out_v.double()[finite], ref_v[finite], atol=4 * torch.finfo(dtype).eps, rtol=1e-2)
    pair_v, pair_s = flashinfer.merge_state(v[:, 0], s[:, 0], v[:, 1], s[:, 1])
    ref2_v, ref2_s = ref.merge_states(v[:, :2], s[:, :2])
    assert torch.equal(torch.isnan(pair_s), torch.isnan(ref2_s)) and torch.equal(torch.isposinf(pair_s), torch.isposinf(ref2_s))
    assert torch.equal(torch.isnan(pair_v), torch.isnan(ref2_v))
    inplace_v, inplace_s = v[:, 0].clone(), s[:, 0].clone()
    flashinfer.merge_state_in_place(inplace_v, inplace_s, v[:, 1], s[:, 1])
    assert torch.equal(torch.isnan(inplace_s), torch.isnan(ref2_s)) and torch.equal(torch.isposinf(inplace_s), torch.isposinf(ref2_s))
