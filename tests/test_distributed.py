"""Context-parallel decode (flashinfer_triton.distributed) across processes, against single-process
decode over the whole cache and the float64 reference.

CPU tier: 3 processes (torch.multiprocessing spawn) on gloo, the kernels under the Triton
interpreter: the cases of the 3-rank world, then those of a 2-rank subgroup (global ranks 1 and 2),
then bad input on the subgroup. GPU tier: one process per GPU on NCCL (1, 2, 4 GPUs as present), bfloat16, realistic
sizes, CUDA-graph capture of run() and run_async(). Every process builds the same global paged
cache from one seed, keeps only its shard's pages in a local cache of its own (renumbered), and
runs the wrapper; every rank must return bit-identical results, and one rank per case checks them.
"""

from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import INTERPRET, _err, assert_close_to_reference, poisoned
from tests.reference.attention import attention_ref, build_paged_cache

SEED = 19_000

# (kv_len, shard policy): an empty request, one a single rank holds, uneven contiguous shards
# (some ranks empty), round-robin pages, even shards, and one long enough to split on every rank.
REQUESTS = [(0, "even"), (1, "one"), (37, "uneven"), (23, "strided"), (64, "even"), (9, "one")]
LONG = (420, "even")  # > 128 tokens per shard at 3 ranks: fixed_split_size splits it locally


def _owners(num_pages, policy, world, req, gen):
    """Which rank holds each page of one request."""
    if policy == "even":
        return [j * world // num_pages for j in range(num_pages)]
    if policy == "one":
        return [req % world] * num_pages
    if policy == "strided":
        return [j % world for j in range(num_pages)]
    if policy == "uneven":  # random cut points, so some ranks may hold nothing
        cuts = sorted(torch.randint(0, num_pages + 1, (world - 1,), generator=gen).tolist())
    else:  # "uneven_nonempty": distinct cut points, every rank holds some pages
        cuts = sorted((torch.randperm(num_pages - 1, generator=gen)[: world - 1] + 1).tolist())
    return [sum(j >= c for c in cuts) for j in range(num_pages)]


def _local_shard(cache, indptr, indices, last, page_size, policies, rank, world, gen, rank_gen):
    """This rank's local cache (its pages only, renumbered in a random order) and page table."""
    indptr_h, indices_h, last_h = indptr.tolist(), indices.tolist(), last.tolist()
    mine, loc_indptr, loc_last = [], [0], []
    for i, policy in enumerate(policies):
        ids = indices_h[indptr_h[i]:indptr_h[i + 1]]
        owners = _owners(len(ids), policy, world, i, gen) if ids else []
        kept = [j for j, o in enumerate(owners) if o == rank]
        mine += [ids[j] for j in kept]
        loc_indptr.append(len(mine))
        loc_last.append(0 if not kept else (last_h[i] if kept[-1] == len(ids) - 1 else page_size))
    perm = torch.randperm(len(mine) + 2, generator=rank_gen)  # two pages of garbage never referenced
    local = torch.randn((len(mine) + 2,) + tuple(cache.shape[1:]), generator=rank_gen).to(cache.dtype)
    if mine:
        local[perm[:len(mine)]] = cache[torch.tensor(mine)]
    i32 = dict(dtype=torch.int32, device=cache.device)
    return (local.to(cache.device), torch.tensor(loc_indptr, **i32), perm[:len(mine)].to(**i32),
            torch.tensor(loc_last, **i32))


def _all_gather_flat(out, t, group):
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t, group=group)


def _same_on_every_rank(name, t, group):
    """Every rank merged the same states with the same kernel: results are bit-identical."""
    flat = t.contiguous().view(-1).view(torch.uint8)
    world = dist.get_world_size(group)
    every = torch.empty(world * flat.numel(), dtype=torch.uint8, device=t.device)
    _all_gather_flat(every, flat, group)
    rows = every.view(world, -1)
    for r in range(1, world):
        assert torch.equal(rows[r], rows[0]), f"{name}: rank {r}'s result differs from rank 0's"


def _check(name, out, lse, single_out, single_lse, q, ks, vs, dtype, **opts):
    """Against the float64 reference (tolerance from the low-precision reference) and, where given,
    against single-process decode (within the low-precision reference's error plus two roundings)."""
    for i in range(q.shape[0]):
        ref, ref_lse = attention_ref(q[i:i + 1], ks[i], vs[i], **opts)
        low, low_lse = attention_ref(q[i:i + 1], ks[i], vs[i], compute_dtype=dtype, **opts)
        assert_close_to_reference(out[i:i + 1], ref, low, name=f"{name} out[{i}]")
        eps = torch.finfo(dtype).eps
        if single_out is not None:
            assert _err(out[i:i + 1], single_out[i:i + 1]) <= _err(low, ref) + 2 * eps, \
                f"{name} out[{i}]: differs from single-process decode"
        if lse is not None:
            assert_close_to_reference(lse[i:i + 1], ref_lse, low_lse, name=f"{name} lse[{i}]")
            assert _err(lse[i:i + 1], single_lse[i:i + 1]) <= _err(low_lse, ref_lse) + 2 * eps, \
                f"{name} lse[{i}]: differs from single-process decode"


def _check_coverage(name, l_indptr, l_last, kv_lens, page_size, split, group):
    """The case covers what it claims: an empty request, a request some rank holds none of, and,
    with a fixed split size, a shard on every rank that the local decode splits."""
    pages = (l_indptr[1:] - l_indptr[:-1]).to(torch.int64)
    tokens = torch.where(pages > 0, (pages - 1) * page_size + l_last.to(torch.int64), 0)
    world = dist.get_world_size(group)
    every = torch.empty(world * tokens.numel(), dtype=torch.int64, device=tokens.device)
    _all_gather_flat(every, tokens, group)
    every = every.view(world, -1).cpu()
    assert every.sum(0).tolist() == kv_lens, f"{name}: the shards do not add up to the requests"
    assert 0 in kv_lens, f"{name}: no empty request"
    assert world == 1 or any(0 in every[:, i].tolist() and n > 0 for i, n in enumerate(kv_lens)), \
        f"{name}: every rank holds part of every request"
    if split is not None:
        assert (every.min(0).values > split * page_size).any(), \
            f"{name}: no request is long enough on every rank to be split"


def _run_case(fi, cpd, group, idx, case, device, ws_bytes):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dtype, collective, layout, page_size, hq, hkv, d = (case[k] for k in ("dtype", "collective", "layout", "page",
                                                                          "hq", "hkv", "d"))
    split, soft_cap, requests = case["split"], case["soft_cap"], case["requests"]
    seed = SEED + 97 * idx + world
    name = f"case {idx} ({collective}, {dtype}, {layout}, world {world}, seed {seed})"
    gen = torch.Generator().manual_seed(seed)
    kv_lens, policies = [n for n, _ in requests], [p for _, p in requests]
    cache, indptr, indices, last, ks, vs = build_paged_cache(kv_lens, page_size, hkv, d, dtype, device, layout,
                                                            generator=gen)
    q = torch.randn(len(kv_lens), hq, d, generator=gen).to(dtype).to(device)
    q2 = torch.randn(len(kv_lens), hq, d, generator=gen).to(dtype).to(device)
    rank_gen = torch.Generator().manual_seed(seed + 1000 * (rank + 1))
    local, l_indptr, l_indices, l_last = _local_shard(cache.cpu(), indptr.cpu(), indices.cpu(), last.cpu(), page_size,
                                                      policies, rank, world, gen, rank_gen)
    local, l_indptr, l_indices, l_last = (t.to(device) for t in (local, l_indptr, l_indices, l_last))
    _check_coverage(name, l_indptr, l_last, kv_lens, page_size, split, group)
    opts = dict(q_data_type=dtype, fixed_split_size=split, logits_soft_cap=soft_cap)
    ws = torch.empty(ws_bytes, dtype=torch.uint8, device=device)
    cp = cpd.ContextParallelDecodeWrapper(ws, group=group, kv_layout=layout, collective=collective)
    assert (cp.rank, cp.world_size) == (rank, world)
    cp.plan(l_indptr, l_indices, l_last, hq, hkv, d, page_size, **opts)
    out = poisoned(q.shape, dtype, device)
    lse = poisoned(q.shape[:2], torch.float32, device)
    res = cp.run(q, local, out=out, lse=lse)
    state_bytes = -(-out.numel() * out.element_size() // 16) * 16 + -(-lse.numel() * 4 // 16) * 16
    if collective == "all_gather":
        assert cp.exchange_bytes == (world - 1) * state_bytes
    assert res[0] is out and res[1] is lse
    # Another layer: fresh q, no buffers, through the side-stream path.
    out2 = cp.run_async(q2, local).wait()
    for n, t in (("out", out), ("lse", lse), ("second out", out2)):
        _same_on_every_rank(f"{name} {n}", t, group)
    if idx % world != rank:
        return
    single = fi.BatchDecodeWithPagedKVCacheWrapper(ws, kv_layout=layout)
    single.plan(indptr, indices, last, hq, hkv, d, page_size, **opts)
    s_out, s_lse = single.run(q, cache, return_lse=True)
    ref_opts = dict(logits_soft_cap=soft_cap or 0.0)
    _check(name, out, lse, s_out, s_lse, q, ks, vs, dtype, **ref_opts)
    _check(name + " second run", out2, None, None, None, q2, ks, vs, dtype, **ref_opts)


def _expect(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


def _run_errors(cpd, group, device):
    """Bad plans and calls raise on every rank, before any collective that could hang."""
    rank = dist.get_rank(group)
    ws = torch.empty(1 << 20, dtype=torch.uint8, device=device)
    i32 = dict(dtype=torch.int32, device=device)
    batch = 2 + rank  # differs across ranks
    indptr = torch.arange(batch + 1, **i32)
    indices = torch.arange(batch, **i32)
    last = torch.full((batch,), 3, **i32)
    cache = torch.randn(batch, 2, 4, 1, 64).to(device)
    cp = cpd.ContextParallelDecodeWrapper(ws, group=group)
    _expect(RuntimeError, "plan", lambda: cp.run(torch.randn(batch, 4, 64), cache))
    _expect(ValueError, "batch must be the same on every rank", lambda: cp.plan(indptr, indices, last, 4, 1, 64, 4,
                                                                                q_data_type=torch.float32))
    _expect(RuntimeError, "plan", lambda: cp.run(torch.randn(batch, 4, 64), cache))  # a failed plan() plans nothing
    indptr, indices, last, cache = indptr[:3], indices[:2], last[:2], cache[:2]
    _expect(ValueError, "sm_scale must be the same", lambda: cp.plan(indptr, indices, last, 4, 1, 64, 4,
                                                                     q_data_type=torch.float32, sm_scale=0.1 + rank))
    _expect(NotImplementedError, "pos_encoding_mode", lambda: cp.plan(indptr, indices, last, 4, 1, 64, 4,
                                                                      pos_encoding_mode="ROPE_LLAMA"))
    _expect(NotImplementedError, "window_left", lambda: cp.plan(indptr, indices, last, 4, 1, 64, 4, window_left=8))
    rs = cpd.ContextParallelDecodeWrapper(ws, group=group, collective="reduce_scatter")
    _expect(NotImplementedError, "multiple of the group size", lambda: rs.plan(indptr, indices, last, 3, 1, 64, 4))
    cp.plan(indptr, indices, last, 4, 1, 64, 4, q_data_type=torch.float32)
    q = torch.randn(2, 4, 64, device=device)
    _expect(ValueError, r"out: expected shape \[2, 4, 64\]",
            lambda: cp.run(q, cache, out=torch.empty(2, 4, 32, device=device)))
    _expect(TypeError, "lse: expected a float32", lambda: cp.run(q, cache, lse=torch.empty(2, 4, dtype=torch.float16)))
    pending = cp.run_async(q, cache, return_lse=True)
    _expect(RuntimeError, "wait", lambda: cp.run(q, cache))
    o, s = pending.wait()
    assert o.shape == (2, 4, 64) and s.shape == (2, 4) and torch.isfinite(o).all()
    assert torch.equal(cp.run(q, cache), o)


def _cpu_cases(world):
    """Across the two group sizes: both collectives in both dtypes, both layouts, a soft cap, page
    sizes 4 and 5, heads not a multiple of the group size (all_gather), fixed split sizes."""
    f16, f32 = torch.float16, torch.float32
    base = dict(layout="NHD", page=4, hq=6, hkv=2, d=64, split=None, soft_cap=None, requests=REQUESTS)
    split = dict(split=128 // 4, requests=REQUESTS[:3] + [LONG])  # 128-token chunks: LONG splits on every rank
    if world == 2:
        return [dict(base, dtype=f16, collective="all_gather"),
                dict(base, dtype=f32, collective="reduce_scatter", page=5),
                dict(base, dtype=f16, collective="all_gather", **split)]
    return [dict(base, dtype=f32, collective="all_gather", layout="HND", soft_cap=20.0, hq=4, hkv=1),
            dict(base, dtype=f16, collective="reduce_scatter"),
            dict(base, dtype=f16, collective="reduce_scatter", **split)]


def _worker(rank, world, tmp, backend):
    """One rank: run every case; on failure leave the traceback in ``tmp`` for the parent (a rank
    that fails makes the others fail in their next collective, which spawn may report first)."""
    if backend == "gloo":
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
        device = torch.device("cpu")
    else:
        # NVLink multicast off (the device machines require it), before the communicator is created.
        os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    import flashinfer_triton as fi
    import flashinfer_triton.distributed as cpd

    dist.init_process_group(backend, init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120 if backend == "gloo" else 300))
    try:
        if backend == "gloo":
            # The whole world (3 ranks), then a group of 2 whose ranks are not the global ones.
            pair = dist.new_group([1, 2])
            for group, members in ((None, range(world)), (pair, (1, 2))):
                if rank in members:
                    for idx, case in enumerate(_cpu_cases(dist.get_world_size(group))):
                        _run_case(fi, cpd, group, idx, case, device, 4 << 20)
            if rank in (1, 2):
                _run_errors(cpd, pair, device)
        else:
            for idx, case in enumerate(_gpu_cases()):
                _run_case(fi, cpd, None, idx, case, device, 128 << 20)
            for collective in ("all_gather", "reduce_scatter"):
                _graph_case(fi, cpd, rank, world, collective, device)
    except BaseException:
        with open(os.path.join(tmp, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _spawn(world, tmp_path, backend):
    try:
        mp.spawn(_worker, args=(world, str(tmp_path), backend), nprocs=world, join=True)
    except mp.ProcessRaisedException:
        errors = {p.name: p.read_text() for p in sorted(tmp_path.glob("rank*.err"))}
        # The assertion (or the first error raised outside a collective) is the cause; the rest follow it.
        first = sorted(errors.items(), key=lambda kv: ("AssertionError" not in kv[1], "gloo" in kv[1] or "NCCL" in kv[1]))
        pytest.fail("\n\n".join(f"--- {name}\n{text}" for name, text in first), pytrace=False)


@pytest.mark.skipif(torch.cuda.is_available() and not INTERPRET,
                    reason="CPU tier (gloo + interpreter); the GPU tier runs the NCCL test")
def test_context_parallel_decode_gloo(tmp_path, monkeypatch):
    """3 processes: the cases of a 3-rank group, then those of a 2-rank subgroup, then bad input."""
    print(f"seeds {SEED} + 97 * case + group size")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # inherited by the spawned processes
    _spawn(3, tmp_path, "gloo")


def test_requires_initialized_group_and_known_collective():
    import flashinfer_triton.distributed as cpd

    ws = torch.empty(1024, dtype=torch.uint8)
    with pytest.raises(ValueError, match="collective"):
        cpd.ContextParallelDecodeWrapper(ws, collective="ring")
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            cpd.ContextParallelDecodeWrapper(ws)


# --------------------------------------------------------------------------------------------
# GPU tier: NCCL, one process per GPU
# --------------------------------------------------------------------------------------------

_NUM_GPUS = torch.cuda.device_count() if torch.cuda.is_available() and not INTERPRET else 0


def _gpu_cases():
    bf16, f16 = torch.bfloat16, torch.float16
    requests = [(0, "even"), (1, "one"), (16, "strided"), (17, "uneven"), (3000, "uneven"), (20000, "even"),
                (777, "strided"), (65536, "uneven_nonempty"), (5, "one")]
    base = dict(layout="NHD", page=16, hq=32, hkv=8, d=128, split=None, soft_cap=None, requests=requests)
    return [dict(base, dtype=bf16, collective="all_gather"), dict(base, dtype=bf16, collective="reduce_scatter"),
            dict(base, dtype=f16, collective="all_gather", layout="HND", soft_cap=30.0),
            dict(base, dtype=bf16, collective="reduce_scatter", split=64)]


def _graph_case(fi, cpd, rank, world, collective, device):
    """Capture run() and run_async() + wait() once, re-plan with other lengths (same batch size),
    replay with new queries: each replay matches single-process decode of the batch it ran."""
    dtype, page, hq, hkv, d = torch.bfloat16, 16, 32, 8, 128
    batch, max_pages = 4, 1024
    i32 = dict(dtype=torch.int32, device=device)
    bufs = (torch.empty(batch + 1, **i32), torch.empty(max_pages, **i32), torch.empty(batch, **i32))
    ws = torch.empty(128 << 20, dtype=torch.uint8, device=device)
    cp = cpd.ContextParallelDecodeWrapper(ws, collective=collective, use_cuda_graph=True, paged_kv_indptr_buffer=bufs[0],
                                          paged_kv_indices_buffer=bufs[1], paged_kv_last_page_len_buffer=bufs[2])
    # Static tensors the graphs read and write: queries, this rank's cache, outputs.
    q = torch.empty(batch, hq, d, dtype=dtype, device=device)
    local_cache = torch.empty(max_pages, 2, page, hkv, d, dtype=dtype, device=device)
    out = torch.empty(batch, hq, d, dtype=dtype, device=device)
    lse = torch.empty(batch, hq, dtype=torch.float32, device=device)
    graphs = None
    for step, lens in enumerate(([300, 5000, 17, 0], [9000, 1, 2048, 64])):
        seed = SEED + 7 * step + world
        gen = torch.Generator().manual_seed(seed)
        cache, indptr, indices, last, ks, vs = build_paged_cache(lens, page, hkv, d, dtype, device, generator=gen)
        rank_gen = torch.Generator().manual_seed(seed + 1000 * (rank + 1))
        local, *table = _local_shard(cache.cpu(), indptr.cpu(), indices.cpu(), last.cpu(), page,
                                     ["uneven", "even", "strided", "one"], rank, world, gen, rank_gen)
        local_cache[: local.shape[0]].copy_(local)
        cp.plan(*(t.to(device) for t in table), hq, hkv, d, page, q_data_type=dtype)
        q.copy_(torch.randn(batch, hq, d, generator=gen).to(dtype))
        if graphs is None:
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):  # warm-up outside capture (compiles, NCCL set-up)
                for _ in range(2):
                    cp.run(q, local_cache, out=out, lse=lse)
                    cp.run_async(q, local_cache, out=out, lse=lse).wait()
            torch.cuda.current_stream(device).wait_stream(stream)
            graphs = (torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph())
            with torch.cuda.graph(graphs[0]):
                cp.run(q, local_cache, out=out, lse=lse)
            with torch.cuda.graph(graphs[1]):
                cp.run_async(q, local_cache, out=out, lse=lse).wait()
        single = fi.BatchDecodeWithPagedKVCacheWrapper(ws)
        single.plan(indptr, indices, last, hq, hkv, d, page, q_data_type=dtype)
        s_out, s_lse = single.run(q, cache, return_lse=True)
        for kind, graph in zip(("run", "run_async"), graphs):
            out.fill_(float("nan"))
            lse.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize(device)
            _same_on_every_rank(f"graph {kind} step {step}", out, None)
            _check(f"graph {kind} {collective} step {step} (seed {seed})", out, lse, s_out, s_lse, q, ks, vs, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("world", [1, 2, 4])
def test_context_parallel_decode_nccl(world, tmp_path, monkeypatch):
    if _NUM_GPUS < world:
        pytest.skip(f"needs {world} CUDA device(s), found {_NUM_GPUS}")
    if not dist.is_nccl_available():
        pytest.skip("NCCL is not available")
    print(f"seeds {SEED} + 97 * case + {world}")
    for key, value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"), ("NVSHMEM_DISABLE_NVLS", "1")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _spawn(world, tmp_path, "nccl")
