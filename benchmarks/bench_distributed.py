"""Context-parallel decode across GPUs (flashinfer_triton.distributed), one process per GPU.

Batch 1 and 8 x context 128k, 512k and 1M tokens per request; 32 query / 8 KV heads, head_dim 128,
page 16, bfloat16. Every rank holds an even contiguous shard of every request's pages in a cache of
its own. Per case and collective (all_gather, reduce_scatter), with CUDA-graph replay and the L2
flushed before each replay (a capture that fails falls back to eager timing; the row says so):

- ``step_us``: ``run()`` (local decode + exchange + merge), the slowest rank's median;
- ``local_us``: the local decode alone (``BatchDecodeWithPagedKVCacheWrapper`` over the shard);
- ``exchange_us``: the exchange and merge alone (collectives, copies, ``merge_states``);
- ``single_gpu_us``: rank 0's decode of the whole, unsharded cache (one GPU), and FlashInfer's when it
  is installed; ``speedup = single_gpu_us / step_us`` and ``efficiency = speedup / world_size``;
- bytes each rank receives per step (as many as it sends), host time of an eager ``run()``, and the largest deviation
  of the result from single-GPU decode relative to its largest magnitude.

NVLink multicast stays off: the script sets ``NCCL_NVLS_ENABLE=0`` (and the PyTorch and NVSHMEM
switches) before the process group exists; the command below sets it too. Rows go to
``benchmarks/results/distributed.json`` (and ``$OUT``), keeping rows of other world sizes from
earlier runs, so one file holds 1, 2, 4 and 8 GPUs. Without torchrun it runs as one process.

    NCCL_NVLS_ENABLE=0 PYTHONPATH=. torchrun --nproc_per_node N benchmarks/bench_distributed.py [--quick]
        [--collective all_gather|reduce_scatter|both] [--batches 1 8] [--contexts 131072 524288 1048576]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import (  # noqa: E402
    RESULTS_DIR, environment, host_time, markdown_table, time_eager, time_graph, try_import_flashinfer, write_results,
)
import flashinfer_triton  # noqa: E402
from flashinfer_triton.distributed import COLLECTIVES, ContextParallelDecodeWrapper  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
WS_BYTES = 256 << 20
SEED = 1900


def shard_pages(context: int, rank: int, world: int) -> int:
    """Pages of one request that ``rank`` holds: an even contiguous split of ``context // PAGE``."""
    pages = context // PAGE
    return (rank + 1) * pages // world - rank * pages // world


def make_shard(batch: int, context: int, rank: int, world: int, device, out=None):
    """Rank ``rank``'s cache and page table: ``batch`` requests of ``shard_pages`` full pages each,
    in shuffled page ids, filled from a generator seeded by the rank (so rank 0 can rebuild it).
    With ``out``, the pages are written into that slice of a larger cache."""
    n = shard_pages(context, rank, world)
    total = batch * n
    cache = out if out is not None else torch.empty(total, 2, PAGE, HKV, D, dtype=DTYPE, device=device)
    cache.normal_(generator=torch.Generator(device=device).manual_seed(SEED + rank))
    ids = torch.randperm(total, generator=torch.Generator().manual_seed(SEED + rank)).to(torch.int32)
    i32 = dict(dtype=torch.int32, device=device)
    indptr = torch.arange(batch + 1, **i32) * n
    last = torch.full((batch,), PAGE, **i32)
    return cache, indptr, ids.to(device), last


def timed(fn, reps, flush_l2=True):
    """(microseconds, how): graph replay, or eager timing when the capture fails."""
    try:
        return time_graph(fn, reps=reps, flush_l2=flush_l2), "graph"
    except Exception as exc:  # noqa: BLE001 - report it and time eagerly instead
        print(f"  graph capture failed ({type(exc).__name__}: {exc}); timing eagerly", flush=True)
        torch.cuda.synchronize()
        return time_eager(fn, reps=reps, flush_l2=flush_l2), "eager"


def single_gpu(batch, context, world, device, reps, fi, cp_out, q):
    """Rank 0 only: decode over the whole cache on one GPU (ours and FlashInfer's), and the largest
    deviation of the context-parallel output ``cp_out`` from ours, relative to max |output|."""
    n = [shard_pages(context, r, world) for r in range(world)]
    full = torch.empty(batch * sum(n), 2, PAGE, HKV, D, dtype=DTYPE, device=device)
    tables, start = [], 0
    for r in range(world):
        _, indptr, ids, _ = make_shard(batch, context, r, world, device, out=full[start:start + batch * n[r]])
        tables.append((ids + start).view(batch, n[r]))
        start += batch * n[r]
    indices = torch.cat(tables, dim=1).reshape(-1).contiguous()
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * sum(n)
    last = torch.full((batch,), PAGE, dtype=torch.int32, device=device)
    res = {}
    ws = torch.empty(WS_BYTES, dtype=torch.uint8, device=device)
    ours = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
    ours.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
    o = torch.empty_like(q)
    res["single_gpu_us"], _ = timed(lambda: ours.run(q, full, out=o), reps)
    ours.run(q, full, out=o)
    scale = o.float().abs().max().item()
    res["max_rel_diff_vs_single"] = (cp_out.float() - o.float()).abs().max().item() / max(scale, 1e-30)
    if fi is not None:
        try:
            w = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(WS_BYTES, dtype=torch.uint8, device=device), "NHD",
                                                      use_tensor_cores=True)
            w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, kv_data_type=DTYPE)
            o_fi = torch.empty_like(q)
            res["flashinfer_single_gpu_us"], _ = timed(lambda: w.run(q, full, out=o_fi), reps)
            res["flashinfer_max_rel_diff"] = (o_fi.float() - o.float()).abs().max().item() / max(scale, 1e-30)
        except Exception as exc:  # noqa: BLE001
            print(f"  FlashInfer failed: {type(exc).__name__}: {exc}", flush=True)
    del full
    torch.cuda.empty_cache()
    return res


def run_case(batch, context, collective, rank, world, device, reps, fi):
    cache, indptr, indices, last = make_shard(batch, context, rank, world, device)
    q = torch.randn(batch, HQ, D, generator=torch.Generator(device=device).manual_seed(SEED), device=device,
                    dtype=torch.float32).to(DTYPE)
    ws = torch.empty(WS_BYTES, dtype=torch.uint8, device=device)
    cp = ContextParallelDecodeWrapper(ws, collective=collective)
    cp.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
    out = torch.empty_like(q)
    mine = {}
    mine["step_us"], mine["timing"] = timed(lambda: cp.run(q, cache, out=out), reps)
    # The exchange and merge alone, on the partials the last run left in the send buffer.
    mine["exchange_us"], _ = timed(lambda: cp._exchange_into(out, None), reps, flush_l2=False)
    mine["run_host_us"] = host_time(lambda: cp.run(q, cache, out=out), reps=50)
    local = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(torch.empty(WS_BYTES, dtype=torch.uint8, device=device))
    local.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
    o_loc = torch.empty_like(q)
    l_loc = torch.empty(batch, HQ, dtype=torch.float32, device=device)
    mine["local_us"], _ = timed(lambda: local.run(q, cache, out=o_loc, lse=l_loc), reps)
    cp.run(q, cache, out=out)
    torch.cuda.synchronize()
    received = cp.exchange_bytes
    local_kv_bytes = cache.numel() * cache.element_size()
    del cache, local, ws
    torch.cuda.empty_cache()
    every = [None] * world
    dist.all_gather_object(every, mine)
    extra = single_gpu(batch, context, world, device, reps, fi, out, q) if rank == 0 else {}
    dist.barrier()
    if rank != 0:
        return None
    local_us = max(m["local_us"] for m in every)
    row = dict(system="flashinfer_triton_cp", collective=collective, world_size=world, batch=batch, context=context,
               step_us=max(m["step_us"] for m in every), step_us_rank0=every[0]["step_us"], local_us=local_us,
               exchange_us=max(m["exchange_us"] for m in every), run_host_us=every[0]["run_host_us"],
               timing=every[0]["timing"], bytes_received=received,
               local_kv_tbps=local_kv_bytes / (local_us * 1e-6) / 1e12, **extra)
    if "single_gpu_us" in row:
        row["speedup"] = row["single_gpu_us"] / row["step_us"]
        row["efficiency"] = row["speedup"] / world
    return row


def init():
    """torchrun's environment, or a one-process group when run as a plain script."""
    # NVLink multicast off (the device machines require it); NCCL reads these when the communicator is made.
    os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                       ("MASTER_PORT", "29519")):
        os.environ.setdefault(key, value)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
    return dist.get_rank(), dist.get_world_size(), device


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8 at 128k tokens only")
    ap.add_argument("--collective", choices=COLLECTIVES + ("both",), default="both")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--contexts", type=int, nargs="+", default=[131072, 524288, 1048576])
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the context-parallel benchmark needs one GPU per process (tests/test_distributed.py "
              "covers the CPU).")
        return
    rank, world, device = init()
    contexts = [131072] if args.quick else args.contexts
    collectives = COLLECTIVES if args.collective == "both" else (args.collective,)
    fi = try_import_flashinfer() if rank == 0 else None
    rows = []
    try:
        for batch in args.batches:
            for context in contexts:
                for collective in collectives:
                    if collective == "reduce_scatter" and HQ % world:
                        print(f"reduce_scatter skipped: {HQ} heads do not split over {world} ranks")
                        continue
                    row = run_case(batch, context, collective, rank, world, device, args.reps, fi)
                    if row is not None:
                        rows.append(row)
                        nan = float("nan")
                        print(f"W={world} {collective:>14} {batch}x{context}: step {row['step_us']:.1f} us (local "
                              f"{row['local_us']:.1f}, exchange {row['exchange_us']:.1f}), single GPU "
                              f"{row.get('single_gpu_us', nan):.1f} us, speedup {row.get('speedup', nan):.2f}, "
                              f"efficiency {row.get('efficiency', nan):.2f}, "
                              f"diff {row.get('max_rel_diff_vs_single', nan):.2e}", flush=True)
    finally:
        if rank == 0 and rows:
            report(rows, world)
        dist.destroy_process_group()


def report(rows, world):
    header = ["world", "collective", "batch", "context", "step us", "local us", "exchange us", "single GPU us",
              "FI single GPU us", "speedup", "efficiency", "MB recv/rank", "run host us", "max rel diff"]
    table = [[r["world_size"], r["collective"], r["batch"], r["context"], r["step_us"], r["local_us"], r["exchange_us"],
              r.get("single_gpu_us", float("nan")), r.get("flashinfer_single_gpu_us", float("nan")),
              r.get("speedup", float("nan")), r.get("efficiency", float("nan")), r["bytes_received"] / 1e6,
              r["run_host_us"], r.get("max_rel_diff_vs_single", float("nan"))] for r in rows]
    md = markdown_table(header, table)
    env = environment()
    nccl = torch.cuda.nccl.version()
    nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    summary = (f"{world} x {env['gpu']}, torch {env['torch']}, triton {env['triton']}, NCCL {nccl}, "
               f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}, flashinfer {env['flashinfer']}")
    print(md)
    print(summary)
    # Keep earlier runs' rows of other world sizes, so one file holds the whole scaling picture.
    kept = []
    path = os.path.join(RESULTS_DIR, "distributed.json")
    if os.path.exists(path):
        with open(path) as f:
            kept = [r for r in json.load(f).get("rows", []) if r.get("world_size") != world]
    for r in rows:
        r["gpu"], r["date"] = env["gpu"], env["date"]
    cmd = f"NCCL_NVLS_ENABLE=0 PYTHONPATH=. torchrun --nproc_per_node {world} benchmarks/bench_distributed.py " + \
        " ".join(sys.argv[1:])
    write_results("distributed", kept + rows, cmd, extra={"summary": summary})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, f"distributed_w{world}.md"), "w") as f:
            f.write(md + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
