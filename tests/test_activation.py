"""silu_and_mul, gelu_and_mul, gelu_tanh_and_mul against float64 references."""

import pytest
import torch

import flashinfer_triton as fi
from flashinfer_triton import activation as act_mod
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference import ops as ref

ACTS = {"silu": fi.silu_and_mul, "gelu": fi.gelu_and_mul, "gelu_tanh": fi.gelu_tanh_and_mul}

# Leading shape and d: odd d, several column blocks, 3-D input, a single token.
SHAPES = gpu_or_cpu(
    [((5,), 100), ((2, 3), 64), ((3,), 2500), ((1,), 7)],
    [((1,), 14336), ((19,), 14336), ((989,), 11008), ((4, 33), 100), ((2048,), 4096)],
)


def _randn(*shape, dtype):
    return (torch.randn(*shape, dtype=torch.float32, device=DEVICE) * 3.0).to(dtype)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("lead,d", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("act", list(ACTS))
def test_act_and_mul(act, lead, d, dtype):
    x = _randn(*lead, 2 * d, dtype=dtype)
    x0 = x.clone()
    out = poisoned((*lead, d), dtype)
    got = ACTS[act](x, out=out)
    assert got is out
    exact = ref.act_and_mul(x, act)
    lowp = ref.act_and_mul(x, act, compute_dtype=torch.float32, out_dtype=dtype)
    assert_close_to_reference(out, exact, lowp)
    assert torch.equal(x, x0)
    assert torch.equal(ACTS[act](x), out)


@pytest.mark.parametrize("act", list(ACTS))
def test_strided_input_and_output(act):
    dtype = LOW_DTYPES[0]
    rows, d = gpu_or_cpu((6, 96), (1000, 4096))
    buf = _randn(rows, 2 * d + 32, dtype=dtype)
    x = buf[:, 16 : 16 + 2 * d]  # strided rows
    out_buf = poisoned((rows, d + 8), dtype)
    out = out_buf[:, :d]
    buf0 = buf.clone()
    ACTS[act](x, out=out)
    assert_close_to_reference(out, ref.act_and_mul(x, act), ref.act_and_mul(x, act, compute_dtype=torch.float32, out_dtype=dtype))
    assert torch.isnan(out_buf[:, d:]).all(), "wrote outside the out view"
    assert torch.equal(buf, buf0)
    # Leading dimensions that do not collapse into one stride (a transposed 3-D view).
    x3 = _randn(3, 4, 2 * d, dtype=dtype).transpose(0, 1)
    out3 = ACTS[act](x3)
    assert out3.shape == (4, 3, d)
    assert_close_to_reference(out3, ref.act_and_mul(x3, act), ref.act_and_mul(x3, act, compute_dtype=torch.float32, out_dtype=dtype))
    out3b = poisoned((3, 4, d), dtype).transpose(0, 1)
    ACTS[act](x3, out=out3b)
    assert torch.equal(out3b, out3)


def test_extreme_values():
    """Large magnitudes: silu saturates to x or 0, no inf/NaN from exp overflow."""
    x = torch.tensor([[-200.0, -30.0, 0.0, 30.0, 1.0, 1.0, 1.0, 1.0]], device=DEVICE)
    for act, fn in ACTS.items():
        out = fn(x)
        assert torch.isfinite(out).all(), act
        torch.testing.assert_close(out.double(), ref.act_and_mul(x, act), rtol=1e-6, atol=1e-6)


def test_empty():
    x = torch.empty(0, 64, device=DEVICE, dtype=torch.float16)
    assert fi.silu_and_mul(x).shape == (0, 32)


def test_bad_arguments():
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="input"):
        fi.silu_and_mul(torch.randn(4, 63, device=DEVICE, dtype=torch.float16))
    with pytest.raises(TypeError, match="input"):
        fi.gelu_and_mul(x.to(torch.int32))
    with pytest.raises(ValueError, match="input"):
        fi.silu_and_mul(torch.randn(64, 4, device=DEVICE, dtype=torch.float16).t())
    with pytest.raises(ValueError, match="out"):
        fi.silu_and_mul(x, out=torch.empty(4, 64, device=DEVICE, dtype=torch.float16))
    with pytest.raises(TypeError, match="out"):
        fi.gelu_tanh_and_mul(x, out=torch.empty(4, 32, device=DEVICE, dtype=torch.float32))
    with pytest.raises(ValueError, match="out"):
        fi.silu_and_mul(x, out=torch.empty(4, 32, device="meta", dtype=torch.float16))


def test_opcheck():
    x = torch.randn(3, 64, device=DEVICE, dtype=torch.float16)
    for act in range(3):
        torch.library.opcheck(act_mod._act_and_mul_op, (torch.empty(3, 32, device=DEVICE, dtype=torch.float16), x, act))


@requires_gpu
def test_torch_compile_fullgraph():
    x = _randn(77, 2 * 14336, dtype=torch.bfloat16)

    def mlp(x):
        return fi.silu_and_mul(x) + fi.gelu_and_mul(x) * fi.gelu_tanh_and_mul(x)

    # Our ops are bit-exact under compile; the surrounding bf16 add/mul may be fused by Inductor
    # (rounded once instead of per op), so the whole expression gets bf16 tolerance.
    for op in (fi.silu_and_mul, fi.gelu_and_mul, fi.gelu_tanh_and_mul):
        torch.testing.assert_close(torch.compile(op, fullgraph=True)(x), op(x), rtol=0, atol=0)
    torch.testing.assert_close(torch.compile(mlp, fullgraph=True)(x), mlp(x), atol=2e-2, rtol=2e-2)
