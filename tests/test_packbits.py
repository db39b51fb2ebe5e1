"""packbits and segment_packbits, bit-exact against numpy.packbits."""

import numpy as np
import pytest
import torch

import flashinfer_triton as flashinfer
from tests.helpers import DEVICE, ON_GPU, gpu_or_cpu

BIG = gpu_or_cpu(5001, 1_000_003)  # more than one program (2048 bits each)


def _np(x, bitorder):
    return torch.from_numpy(np.packbits(x.cpu().numpy().astype(bool), bitorder=bitorder))


@pytest.mark.parametrize("bitorder", ["big", "little"])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, BIG])
def test_packbits(n, bitorder):
    x = torch.rand(n, device=DEVICE) < 0.5
    y = flashinfer.packbits(x, bitorder=bitorder)
    assert y.dtype == torch.uint8 and y.shape == ((n + 7) // 8,)
    assert torch.equal(y.cpu(), _np(x, bitorder))


def test_packbits_default_is_big_and_docstring_example():
    x = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1], dtype=torch.bool, device=DEVICE)
    assert list(map(bin, flashinfer.packbits(x).tolist())) == ["0b10110011"]
    assert list(map(bin, flashinfer.packbits(x, "little").tolist())) == ["0b11001101"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.uint8])
def test_packbits_nonzero_is_one(dtype):
    x = (torch.randint(-2, 3, (37,), device=DEVICE)).to(dtype)
    assert torch.equal(flashinfer.packbits(x).cpu(), _np(x != 0, "big"))


@pytest.mark.parametrize("bitorder", ["big", "little"])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_segment_packbits(bitorder, index_dtype):
    lens = [0, 1, 8, 13, 0, 64, 5, gpu_or_cpu(2100, 300_001), 3]
    indptr = torch.tensor([0] + np.cumsum(lens).tolist(), dtype=index_dtype, device=DEVICE)
    x = torch.rand(int(indptr[-1]) + 5, device=DEVICE) < 0.5  # longer than indptr[-1]: tail ignored
    y, new_indptr = flashinfer.segment_packbits(x, indptr, bitorder=bitorder)
    assert new_indptr.dtype == torch.int32 and y.dtype == torch.uint8
    want = [_np(x[indptr[i]:indptr[i + 1]], bitorder) for i in range(len(lens))]
    assert new_indptr.tolist() == [0] + np.cumsum([len(w) for w in want]).tolist()
    assert torch.equal(y.cpu(), torch.cat(want))


def test_segment_packbits_docstring_example():
    x = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1], dtype=torch.bool, device=DEVICE)
    y, new_indptr = flashinfer.segment_packbits(x, torch.tensor([0, 4, 7, 11], device=DEVICE), bitorder="big")
    assert list(map(bin, y.tolist())) == ["0b10110000", "0b100000", "0b11010000"]
    assert new_indptr.tolist() == [0, 1, 2, 3]


def test_segment_packbits_offset_start():
    x = torch.rand(50, device=DEVICE) < 0.5
    indptr = torch.tensor([10, 19, 19, 40], dtype=torch.int32, device=DEVICE)
    y, new_indptr = flashinfer.segment_packbits(x, indptr, "little")
    assert torch.equal(y.cpu(), torch.cat([_np(x[10:19], "little"), _np(x[19:19], "little"), _np(x[19:40], "little")]))
    assert new_indptr.tolist() == [0, 2, 2, 5]


def test_packbits_errors():
    x = torch.ones(9, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="bitorder"):
        flashinfer.packbits(x, "bit")
    with pytest.raises(ValueError, match="x: expected a 1-D"):
        flashinfer.packbits(x.view(3, 3))
    with pytest.raises(TypeError, match="indptr"):
        flashinfer.segment_packbits(x, torch.tensor([0.0, 9.0], device=DEVICE))
    with pytest.raises(ValueError, match="non-decreasing"):
        flashinfer.segment_packbits(x, torch.tensor([0, 5, 3], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="past x"):
        flashinfer.segment_packbits(x, torch.tensor([0, 10], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="bitorder"):
        flashinfer.segment_packbits(x, torch.tensor([0, 9], dtype=torch.int32, device=DEVICE), "middle")


def test_packbits_compile_and_opcheck():
    from flashinfer_triton import quantization

    x = torch.rand(21, device=DEVICE) < 0.5
    torch.library.opcheck(quantization._packbits_op, (x, "little"), test_utils=("test_schema", "test_faketensor"))
    backend = "inductor" if ON_GPU else "aot_eager"
    f = torch.compile(lambda x: flashinfer.packbits(x, bitorder="little"), fullgraph=True, backend=backend)
    assert torch.equal(f(x).cpu(), _np(x, "little"))
