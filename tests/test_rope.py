"""apply_rope* / apply_llama31_rope* / apply_rope_with_cos_sin_cache* against float64 references."""

import pytest
import torch

import flashinfer_triton as fi
from flashinfer_triton import rope as rope_mod
from tests.helpers import DEVICE, LOW_DTYPES, assert_close_to_reference, gpu_or_cpu, poisoned, requires_gpu
from tests.reference import ops as ref

LLAMA31 = (1.0, 4.0, 8192.0)

# (num_q_heads, num_k_heads, head_dim, rotary_dim): odd head counts, partial rotary dims, and
# more query heads than one head block holds.
HEADS = gpu_or_cpu(
    [(3, 1, 128, 128), (17, 3, 64, 64), (4, 2, 128, 96), (2, 3, 256, 64)],
    [(32, 8, 128, 128), (28, 4, 128, 64), (17, 3, 64, 64), (8, 1, 256, 256)],
)


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Out-of-place results start as NaN, so an element the kernel never writes fails."""
    monkeypatch.setattr(rope_mod, "_empty_like", lambda t: torch.full_like(t, float("nan")))


def _randn(*shape, dtype):
    return torch.randn(*shape, dtype=torch.float32, device=DEVICE).to(dtype)


def _ragged_batch(lens, max_offset):
    lens_t = torch.tensor(lens, dtype=torch.int32)
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(lens_t, 0)
    offsets = torch.randint(0, max_offset, (len(lens),), dtype=torch.int32)
    return indptr.to(DEVICE), offsets.to(DEVICE)


def _check(out, x, pos, rotary_dim, interleave, llama31=None, scale=1.0, theta=1e4, name="out"):
    cos, sin = ref.rope_cos_sin(pos.cpu(), rotary_dim, scale, theta, llama31)
    exact = ref.apply_rotary(x.cpu(), cos, sin, rotary_dim, interleave)
    cos32, sin32 = ref.rope_cos_sin(pos.cpu(), rotary_dim, scale, theta, llama31, compute_dtype=torch.float32)
    lowp = ref.apply_rotary(x.cpu(), cos32, sin32, rotary_dim, interleave, compute_dtype=torch.float32, out_dtype=x.dtype)
    assert_close_to_reference(out.cpu(), exact, lowp, name=name)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("hq,hk,head_dim,rotary_dim", HEADS, ids=lambda v: str(v))
@pytest.mark.parametrize("interleave", [False, True], ids=["neox", "interleave"])
@pytest.mark.parametrize("llama31", [False, True], ids=["rope", "llama31"])
def test_rope_pos_ids(hq, hk, head_dim, rotary_dim, interleave, llama31, dtype):
    nnz = gpu_or_cpu(7, 4099)
    q = _randn(nnz, hq, head_dim, dtype=dtype)
    k = _randn(nnz, hk, head_dim, dtype=dtype)
    pos = torch.randint(0, gpu_or_cpu(3000, 20000), (nnz,), device=DEVICE, dtype=torch.int32)
    q0, k0, pos0 = q.clone(), k.clone(), pos.clone()
    if llama31:
        q_rope, k_rope = fi.apply_llama31_rope_pos_ids(q, k, pos, rotary_dim=rotary_dim, interleave=interleave)
        kw = dict(llama31=LLAMA31, scale=8.0, theta=5e5)
    else:
        q_rope, k_rope = fi.apply_rope_pos_ids(q, k, pos, rotary_dim=rotary_dim, interleave=interleave, rope_scale=2.0, rope_theta=1e4)
        kw = dict(scale=2.0, theta=1e4)
    _check(q_rope, q, pos, rotary_dim, interleave, name="q_rope", **kw)
    _check(k_rope, k, pos, rotary_dim, interleave, name="k_rope", **kw)
    assert torch.equal(q, q0) and torch.equal(k, k0) and torch.equal(pos, pos0)
    if rotary_dim < head_dim:
        assert torch.equal(q_rope[..., rotary_dim:], q[..., rotary_dim:])
    # In place on strided views of a packed QKV tensor: V and the rest must stay untouched.
    qkv = torch.cat([q0.flatten(1), k0.flatten(1), _randn(nnz, hk * head_dim, dtype=dtype)], dim=1)
    qkv0 = qkv.clone()
    qv = qkv[:, : hq * head_dim].view(nnz, hq, head_dim)
    kv = qkv[:, hq * head_dim : (hq + hk) * head_dim].view(nnz, hk, head_dim)
    if llama31:
        fi.apply_llama31_rope_pos_ids_inplace(qv, kv, pos.long(), rotary_dim=rotary_dim, interleave=interleave)
    else:
        fi.apply_rope_pos_ids_inplace(qv, kv, pos.long(), rotary_dim=rotary_dim, interleave=interleave, rope_scale=2.0)
    assert torch.equal(qv, q_rope) and torch.equal(kv, k_rope), "in place must equal out of place"
    assert torch.equal(qkv[:, (hq + hk) * head_dim :], qkv0[:, (hq + hk) * head_dim :])


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("interleave", [False, True], ids=["neox", "interleave"])
@pytest.mark.parametrize("llama31", [False, True], ids=["rope", "llama31"])
def test_rope_ragged(interleave, llama31, dtype):
    hq, hk, head_dim, rotary_dim = gpu_or_cpu((3, 5, 64, 48), (32, 8, 128, 128))
    lens = gpu_or_cpu([3, 0, 5, 1, 2], [1, 513, 0, 2048, 7, 300, 1, 1024])
    indptr, offsets = _ragged_batch(lens, gpu_or_cpu(500, 30000))
    nnz = sum(lens)
    q = _randn(nnz, hq, head_dim, dtype=dtype)
    k = _randn(nnz, hk, head_dim, dtype=dtype)
    pos = ref.positions_from_indptr(indptr.cpu(), offsets.cpu())
    meta0 = (indptr.clone(), offsets.clone())
    q0, k0 = q.clone(), k.clone()
    if llama31:
        q_rope, k_rope = fi.apply_llama31_rope(q, k, indptr, offsets, rotary_dim=rotary_dim, interleave=interleave)
        kw = dict(llama31=LLAMA31, scale=8.0, theta=5e5)
    else:
        q_rope, k_rope = fi.apply_rope(q, k, indptr, offsets, rotary_dim, interleave)
        kw = {}
    _check(q_rope, q, pos, rotary_dim, interleave, name="q_rope", **kw)
    _check(k_rope, k, pos, rotary_dim, interleave, name="k_rope", **kw)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    if llama31:
        fi.apply_llama31_rope_inplace(q, k, indptr, offsets, rotary_dim=rotary_dim, interleave=interleave)
    else:
        fi.apply_rope_inplace(q, k, indptr, offsets, rotary_dim, interleave)
    assert torch.equal(q, q_rope) and torch.equal(k, k_rope)
    assert torch.equal(indptr, meta0[0]) and torch.equal(offsets, meta0[1])


def test_rope_heads_without_splitting(monkeypatch):
    """The launcher spreads heads over programs when there are few tokens; cover the other path."""
    monkeypatch.setattr(rope_mod, "_MIN_PROGRAMS_PER_CU", 0)
    q = _randn(5, 19, 64, dtype=torch.float32)
    k = _randn(5, 9, 64, dtype=torch.float32)
    pos = torch.arange(5, device=DEVICE) * 37
    q_rope, k_rope = fi.apply_rope_pos_ids(q, k, pos)
    _check(q_rope, q, pos, 64, False)
    _check(k_rope, k, pos, 64, False)


@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("is_neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("head_size,rotary_dim", [(128, 128), (128, 64), (64, 32)], ids=lambda v: str(v))
def test_rope_cos_sin_cache(head_size, rotary_dim, is_neox, dtype):
    nnz = gpu_or_cpu(6, 3001)
    hq, hk = gpu_or_cpu((3, 2), (32, 8))
    max_pos = gpu_or_cpu(64, 8192)
    cache = ref.cos_sin_cache(max_pos, rotary_dim).to(DEVICE)
    positions = torch.randint(0, max_pos, (nnz,), device=DEVICE, dtype=torch.int64)
    # vLLM layout: [nnz, H * D] views of a packed QKV projection output.
    qkv = _randn(nnz, (hq + 2 * hk) * head_size, dtype=dtype)
    query = qkv[:, : hq * head_size]
    key = qkv[:, hq * head_size : (hq + hk) * head_size]
    qkv0, cache0, pos0 = qkv.clone(), cache.clone(), positions.clone()
    q_out, k_out = fi.apply_rope_with_cos_sin_cache(positions, query, key, head_size, cache, is_neox=is_neox)
    assert q_out.shape == query.shape and k_out.shape == key.shape
    assert torch.equal(qkv, qkv0)
    half = rotary_dim // 2
    cos64, sin64 = ref.rope_cos_sin(positions.cpu(), rotary_dim)
    c32, s32 = cache[positions].cpu().double().split(half, dim=-1)
    for name, out, x, h in (("query", q_out, query, hq), ("key", k_out, key, hk)):
        x3 = x.reshape(nnz, h, head_size).cpu()
        exact = ref.apply_rotary(x3, cos64, sin64, rotary_dim, not is_neox)
        lowp = ref.apply_rotary(x3, c32, s32, rotary_dim, not is_neox, compute_dtype=torch.float32, out_dtype=dtype)
        assert_close_to_reference(out.reshape(nnz, h, head_size).cpu(), exact, lowp, name=name)
    fi.apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cache, is_neox=is_neox)
    assert torch.equal(query, q_out) and torch.equal(key, k_out)
    assert torch.equal(qkv[:, (hq + hk) * head_size :], qkv0[:, (hq + hk) * head_size :])
    assert torch.equal(cache, cache0) and torch.equal(positions, pos0)


def test_default_arguments():
    """Defaults: rotary_dim = head_dim, NeoX, scale 1 / theta 1e4 (llama31: 8, 5e5, 1, 4, 8192)."""
    q = _randn(4, 2, 64, dtype=torch.float32)
    k = _randn(4, 1, 64, dtype=torch.float32)
    pos = torch.tensor([0, 5, 9, 1000], device=DEVICE, dtype=torch.int32)
    q_rope, _ = fi.apply_rope_pos_ids(q, k, pos)
    _check(q_rope, q, pos, 64, False)
    q_rope, _ = fi.apply_llama31_rope_pos_ids(q, k, pos)
    _check(q_rope, q, pos, 64, False, llama31=LLAMA31, scale=8.0, theta=5e5)


def test_empty():
    q = torch.empty(0, 2, 64, device=DEVICE)
    pos = torch.empty(0, dtype=torch.int32, device=DEVICE)
    q_rope, k_rope = fi.apply_rope_pos_ids(q, q, pos)
    assert q_rope.shape == q.shape


def test_bad_arguments():
    q = torch.randn(4, 2, 64, device=DEVICE, dtype=torch.float16)
    k = torch.randn(4, 1, 64, device=DEVICE, dtype=torch.float16)
    pos = torch.arange(4, device=DEVICE, dtype=torch.int32)
    indptr = torch.tensor([0, 4], device=DEVICE, dtype=torch.int32)
    offsets = torch.zeros(1, device=DEVICE, dtype=torch.int32)
    with pytest.raises(TypeError, match="pos_ids"):
        fi.apply_rope_pos_ids(q, k, pos.float())
    with pytest.raises(ValueError, match="pos_ids"):
        fi.apply_rope_pos_ids(q, k, pos[:3])
    with pytest.raises(TypeError, match="k"):
        fi.apply_rope_pos_ids(q, k.float(), pos)
    with pytest.raises(ValueError, match="k"):
        fi.apply_rope_pos_ids(q, k[..., :32], pos)
    with pytest.raises(ValueError, match="q"):
        fi.apply_rope_pos_ids(q[0], k, pos)
    with pytest.raises(ValueError, match="rotary_dim"):
        fi.apply_rope_pos_ids(q, k, pos, rotary_dim=33)
    with pytest.raises(ValueError, match="rotary_dim"):
        fi.apply_rope_pos_ids(q, k, pos, rotary_dim=128)
    with pytest.raises(NotImplementedError, match="rotary_dim"):
        big = torch.zeros(1, 1, 1024, device=DEVICE, dtype=torch.float16)
        fi.apply_rope_pos_ids(big, big, pos[:1])
    with pytest.raises(TypeError, match="indptr"):
        fi.apply_rope(q, k, indptr.long(), offsets)
    with pytest.raises(ValueError, match="offsets"):
        fi.apply_rope(q, k, indptr, torch.zeros(2, device=DEVICE, dtype=torch.int32))
    with pytest.raises(ValueError, match="rope_theta"):
        fi.apply_rope_inplace(q, k, indptr, offsets, rope_theta=0.0)
    with pytest.raises(ValueError, match="high_freq_factor"):
        fi.apply_llama31_rope(q, k, indptr, offsets, low_freq_factor=4, high_freq_factor=4)
    with pytest.raises(TypeError, match="interleave"):
        fi.apply_rope_pos_ids(q, k, pos, interleave="yes")
    cache = ref.cos_sin_cache(16, 64).to(DEVICE)
    with pytest.raises(ValueError, match="cos_sin_cache"):
        fi.apply_rope_with_cos_sin_cache(pos, q.flatten(1), k.flatten(1), 64, cache.half())
    with pytest.raises(ValueError, match="query"):
        fi.apply_rope_with_cos_sin_cache(pos, q.flatten(1)[:, :100], k.flatten(1), 64, cache)
    with pytest.raises(ValueError, match="rotary_dim"):
        fi.apply_rope_with_cos_sin_cache(pos, q.flatten(1), k.flatten(1), 32, cache)
    with pytest.raises(ValueError, match="positions"):
        fi.apply_rope_with_cos_sin_cache(pos[:2], q.flatten(1), k.flatten(1), 64, cache)


def test_opcheck():
    q = torch.randn(3, 2, 64, device=DEVICE, dtype=torch.float16)
    k = torch.randn(3, 1, 64, device=DEVICE, dtype=torch.float16)
    pos = torch.arange(3, device=DEVICE, dtype=torch.int32)
    args = (pos, None, None, None, 64, False, 1.0, 1e4, 0.0, 0.0)
    torch.library.opcheck(rope_mod._rope_op, (q, k, torch.empty_like(q), torch.empty_like(k)) + args)
    torch.library.opcheck(rope_mod._rope_inplace_op, (q.clone(), k.clone()) + args)


@requires_gpu
def test_torch_compile_fullgraph():
    nnz, hq, hk, d = 1000, 32, 8, 128
    q = _randn(nnz, hq, d, dtype=torch.bfloat16)
    k = _randn(nnz, hk, d, dtype=torch.bfloat16)
    pos = torch.randint(0, 8192, (nnz,), device=DEVICE)
    cache = ref.cos_sin_cache(8192, d).to(DEVICE)

    def f(q, k, pos):
        qr, kr = fi.apply_rope_pos_ids(q, k, pos)
        fi.apply_llama31_rope_pos_ids_inplace(qr, kr, pos)
        q2, k2 = fi.apply_rope_with_cos_sin_cache(pos, qr.flatten(1), kr.flatten(1), d, cache)
        return q2 + 1, k2

    expect = f(q, k, pos)
    got = torch.compile(f, fullgraph=True)(q, k, pos)
    for a, b in zip(got, expect):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
