"""rmsnorm, gemma_rmsnorm, fused_add_rmsnorm, gemma_fused_add_rmsnorm, layernorm against float64 references."""

import pytest
import torch

import flashinfer_triton as fi
from tests.helpers import DEVICE, LOW_DTYPES, ON_GPU, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference import ops as ref

# (batch, hidden): odd hidden sizes, one above the largest single block (the looped kernel).
SHAPES = gpu_or_cpu(
    [(3, 100), (7, 64), (2, 5120), (2, 20000)],
    [(1, 4096), (19, 100), (99, 5120), (989, 6144), (4096, 8192), (33, 14336), (5, 20000)],
)


def _randn(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32, device=DEVICE) * scale).to(dtype)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("batch,hidden", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("gemma", [False, True], ids=["rms", "gemma"])
def test_rmsnorm(batch, hidden, dtype, gemma):
    x = _randn(batch, hidden, dtype=dtype, scale=3.0)
    w = _randn(hidden, dtype=dtype)
    w_before = w.clone()
    x_before = x.clone()
    fn = fi.gemma_rmsnorm if gemma else fi.rmsnorm
    out = poisoned((batch, hidden), dtype)
    got = fn(x, w, eps=1e-5, out=out)
    assert got is out
    bias = 1.0 if gemma else 0.0
    exact = ref.rmsnorm(x, w, 1e-5, bias)
    lowp = ref.rmsnorm(x, w, 1e-5, bias, compute_dtype=torch.float32, out_dtype=dtype)
    assert_close_to_reference(out, exact, lowp)
    assert torch.equal(x, x_before) and torch.equal(w, w_before)
    # The allocating form returns the same values.
    assert torch.equal(fn(x, w, 1e-5), out)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_rmsnorm_strided_3d(dtype):
    """QK-norm on a [tokens, heads, head_dim] view of a fused QKV tensor (rows not contiguous)."""
    tokens, heads, head_dim = gpu_or_cpu((5, 3, 128), (777, 32, 128))
    qkv = _randn(tokens, heads + 2, head_dim, dtype=dtype, scale=2.0)
    q = qkv[:, 1 : heads + 1]
    w = _randn(head_dim, dtype=dtype)
    out_buf = poisoned((tokens, heads + 1, head_dim), dtype)
    out = out_buf[:, :heads]
    qkv_before = qkv.clone()
    fi.rmsnorm(q, w, out=out)
    assert_close_to_reference(out, ref.rmsnorm(q, w), ref.rmsnorm(q, w, compute_dtype=torch.float32, out_dtype=dtype))
    assert torch.isnan(out_buf[:, heads:]).all(), "wrote outside the out view"
    assert torch.equal(qkv, qkv_before)
    got = fi.gemma_rmsnorm(q, w)
    assert got.shape == q.shape
    assert_close_to_reference(got, ref.rmsnorm(q, w, weight_bias=1.0),
                              ref.rmsnorm(q, w, weight_bias=1.0, compute_dtype=torch.float32, out_dtype=dtype))


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("batch,hidden", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("gemma", [False, True], ids=["rms", "gemma"])
def test_fused_add_rmsnorm(batch, hidden, dtype, gemma):
    # Rows of a wider buffer: the columns outside the views must stay untouched.
    x_buf = _randn(batch, hidden + 8, dtype=dtype, scale=2.0)
    r_buf = _randn(batch, hidden + 16, dtype=dtype, scale=2.0)
    x, r = x_buf[:, :hidden], r_buf[:, 8 : hidden + 8]
    w = _randn(hidden, dtype=dtype)
    x0, r0, w0 = x.clone(), r.clone(), w.clone()
    xb0, rb0 = x_buf.clone(), r_buf.clone()
    fn = fi.gemma_fused_add_rmsnorm if gemma else fi.fused_add_rmsnorm
    assert fn(x, r, w, eps=1e-6) is None
    bias = 1.0 if gemma else 0.0
    y_exact, s_exact = ref.fused_add_rmsnorm(x0, r0, w0, 1e-6, bias)
    y_lowp, s_lowp = ref.fused_add_rmsnorm(x0, r0, w0, 1e-6, bias, compute_dtype=torch.float32, out_dtype=dtype)
    assert_close_to_reference(x, y_exact, y_lowp, name="input (normalized)")
    # The residual is the sum rounded once to its dtype: exactly the float32 sum rounded.
    assert torch.equal(r, s_lowp), "residual must be (input + residual) rounded to its dtype"
    assert torch.equal(w, w0)
    assert torch.equal(x_buf[:, hidden:], xb0[:, hidden:])
    assert torch.equal(r_buf[:, :8], rb0[:, :8]) and torch.equal(r_buf[:, hidden + 8 :], rb0[:, hidden + 8 :])


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
def test_fused_add_rmsnorm_uses_unrounded_sum(dtype):
    """The normalization reads the float32 sum, not the residual rounded to a low precision."""
    if dtype == torch.float32:
        pytest.skip("no rounding of the sum in float32")
    hidden = 256
    x = _randn(4, hidden, dtype=dtype, scale=1.0)
    r = (_randn(4, hidden, dtype=torch.float32) * 300.0).to(dtype)  # large residual: big rounding step
    w = _randn(hidden, dtype=dtype)
    x0, r0 = x.clone(), r.clone()
    fi.fused_add_rmsnorm(x, r, w)
    y_flashinfer, s = ref.fused_add_rmsnorm(x0, r0, w, compute_dtype=torch.float32, out_dtype=dtype)
    y_rounded_sum = ref.rmsnorm(s, w, compute_dtype=torch.float32, out_dtype=dtype)
    wrong = (y_rounded_sum != y_flashinfer).sum().item()
    assert wrong > 0, "test data does not separate the two roundings"
    assert (x != y_flashinfer).sum().item() < wrong / 4


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("batch,hidden", SHAPES, ids=lambda v: str(v))
def test_layernorm(batch, hidden, dtype):
    x = (_randn(batch, hidden, dtype=torch.float32, scale=2.0) + 3.0).to(dtype)  # non-zero mean
    gamma = _randn(hidden, dtype=torch.float32)
    beta = _randn(hidden, dtype=torch.float32)
    x0 = x.clone()
    out = fi.layernorm(x, gamma, beta, eps=1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    assert_close_to_reference(out, ref.layernorm(x, gamma, beta), ref.layernorm(x, gamma, beta, compute_dtype=torch.float32, out_dtype=dtype))
    assert torch.equal(x, x0)


def test_empty_batch():
    x = torch.empty(0, 128, dtype=torch.float16, device=DEVICE)
    w = torch.ones(128, dtype=torch.float16, device=DEVICE)
    assert fi.rmsnorm(x, w).shape == (0, 128)
    fi.fused_add_rmsnorm(x, x.clone(), w)


def test_bad_arguments():
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.float16)
    w = torch.randn(64, device=DEVICE, dtype=torch.float16)
    with pytest.raises(TypeError, match="input"):
        fi.rmsnorm(x.to(torch.int32), w)
    with pytest.raises(TypeError, match="input"):
        fi.rmsnorm(x.tolist(), w)
    with pytest.raises(TypeError, match="weight"):
        fi.rmsnorm(x, w.float())
    with pytest.raises(ValueError, match="weight"):
        fi.rmsnorm(x, torch.randn(63, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match="input"):
        fi.rmsnorm(x[0], w)
    with pytest.raises(ValueError, match="input"):
        fi.rmsnorm(torch.randn(64, 4, device=DEVICE, dtype=torch.float16).t(), w)
    with pytest.raises(ValueError, match="out"):
        fi.rmsnorm(x, w, out=torch.empty(4, 32, device=DEVICE, dtype=torch.float16))
    with pytest.raises(TypeError, match="out"):
        fi.rmsnorm(x, w, out=torch.empty(4, 64, device=DEVICE, dtype=torch.float32))
    with pytest.raises(ValueError, match="weight"):
        fi.rmsnorm(x, torch.empty(64, device="meta", dtype=torch.float16))
    with pytest.raises(TypeError, match="eps"):
        fi.rmsnorm(x, w, eps="1e-6")
    with pytest.raises(ValueError, match="residual"):
        fi.fused_add_rmsnorm(x, torch.randn(3, 64, device=DEVICE, dtype=torch.float16), w)
    with pytest.raises(TypeError, match="residual"):
        fi.fused_add_rmsnorm(x, x.float(), w)
    with pytest.raises(TypeError, match="gemma"):
        fi.layernorm(x, w, w.float())
    with pytest.raises(ValueError, match="beta"):
        fi.layernorm(x, w.float(), torch.zeros(65, device=DEVICE))


def test_opcheck():
    """The torch.library registrations are consistent (schema, fake impl, mutation)."""
    from flashinfer_triton import norm

    x = torch.randn(3, 100, device=DEVICE, dtype=torch.float16)
    w = torch.randn(100, device=DEVICE, dtype=torch.float16)
    torch.library.opcheck(norm._rmsnorm_op, (torch.empty_like(x), x, w, 1e-6, 0.0))
    torch.library.opcheck(norm._fused_add_rmsnorm_op, (x.clone(), x.clone(), w, 1e-6, 1.0))
    torch.library.opcheck(norm._layernorm_op, (torch.empty_like(x), x, w.float(), w.float(), 1e-6))


@requires_gpu
def test_torch_compile_fullgraph():
    dtype = torch.bfloat16
    x = _randn(97, 5120, dtype=dtype)
    r = _randn(97, 5120, dtype=dtype)
    w = _randn(5120, dtype=dtype)

    def layer(x, r, w):
        fi.fused_add_rmsnorm(x, r, w)
        y = fi.rmsnorm(x * 2, w)
        return fi.gemma_rmsnorm(y, w) + fi.layernorm(y, w.float(), w.float())

    x1, r1 = x.clone(), r.clone()
    expect = layer(x1, r1, w)
    compiled = torch.compile(layer, fullgraph=True)
    x2, r2 = x.clone(), r.clone()
    got = compiled(x2, r2, w)
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
    assert torch.equal(x1, x2) and torch.equal(r1, r2)


@requires_gpu
def test_cuda_graph():
    dtype = torch.bfloat16
    x = _randn(64, 8192, dtype=dtype)
    w = _randn(8192, dtype=dtype)
    out = torch.empty_like(x)
    fi.rmsnorm(x, w, out=out)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fi.rmsnorm(x, w, out=out)
    x.copy_(_randn(64, 8192, dtype=dtype))
    out.fill_(float("nan"))
    g.replay()
    torch.cuda.synchronize()
    assert_close_to_reference(out, ref.rmsnorm(x, w), ref.rmsnorm(x, w, compute_dtype=torch.float32, out_dtype=dtype))
