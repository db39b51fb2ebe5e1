"""Sweep the decode entries of this GPU's config table (block shape, pipeline depth, page-granular
gathers) and its split-KV policy, through the real plan/run path (``config.table_override``), on the
decode benchmark's shapes. Every measurement is appended to
``benchmarks/results/tune/decode-<family>.json`` (GPU, versions, date, command); the table in
``flashinfer_triton/attention/config.py`` cites that file. A configuration that fails to compile or
launch is reported and recorded as failed, never silently skipped.

    PYTHONPATH=. python3 benchmarks/tune_decode.py [--quick] [--reps 20]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_decode import D, DTYPE, HKV, HQ, PAGE, kv_bytes, make_batch  # noqa: E402
from benchmarks.harness import RESULTS_DIR, copy_ceiling_tbps, time_graph, write_results  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton.attention import config  # noqa: E402
from flashinfer_triton.attention.device import device_info  # noqa: E402

SHAPES = {"1x16": [16], "1x512": [512], "1x2048": [2048], "1x8192": [8192], "16x512": [512] * 16,
          "64x512": [512] * 64, "256x512": [512] * 256, "16x8192": [8192] * 16,
          "64x8192": [8192] * 64, "16x32768": [32768] * 16, "64x32768": [32768] * 64, "1x131072": [131072]}
QUICK = ("1x512", "16x512", "256x512", "16x8192", "16x32768", "64x32768", "1x131072")


def skew64():
    gen = torch.Generator().manual_seed(0)
    ranks = torch.arange(1, 65, dtype=torch.float64)
    lens = (32768 / ranks ** 1.1).clamp(min=16).round().long()
    return lens[torch.randperm(64, generator=gen)].tolist()


def measure(ws, batch, reps):
    cache, indptr, indices, last, q, lens = batch
    w = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
    w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
    out = torch.empty_like(q)
    us = time_graph(lambda: w.run(q, cache, out=out), reps=reps, warmup=3)
    return us, w.planned.plan.num_items, w.planned.plan.chunk_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop sweeping block shapes after this long")
    ap.add_argument("--block-n", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    # Triton's pipeliner divides a paged loop's depth between the page-id load and the K/V copies
    # that depend on it: num_stages 2-4 keep one K/V buffer (the next copy waits for the current
    # block's compute), 5-6 two buffers, 7-8 three (the AOT IR shows the buffer counts).
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--ppc", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="programs per compute unit to try")
    ap.add_argument("--fill", type=int, nargs="+", default=[2], help="split below this many programs per compute unit")
    ap.add_argument("--min-chunk", type=int, nargs="+", default=[256, 512, 1024], help="smallest chunks to try")
    ap.add_argument("--shapes", nargs="+", default=None, help="rows to measure (default: all, or the quick set)")
    args = ap.parse_args()
    info = device_info(torch.device("cuda"))
    family = info.family
    base = config.TABLES.get(family, config.TABLES["default"])
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    names = args.shapes or [n for n in SHAPES if not args.quick or n in QUICK] + ["skew64"]
    batches = {}
    for name in names:
        lens = SHAPES.get(name) or skew64()
        cache, indptr, indices, last, q = make_batch(lens)
        batches[name] = (cache, indptr, indices, last, q, lens)
    ceiling = copy_ceiling_tbps()
    rows = []
    t0 = time.time()

    def run_all(stage, label, **fields):
        times = {}
        with config.table_override(family, **fields):
            for name in names:
                try:
                    us, items, chunk = measure(ws, batches[name], args.reps)
                except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
                    print(f"  FAILED {label} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    rows.append(dict(stage=stage, config=label, shape=name, failed=f"{type(exc).__name__}: {exc}"[:300]))
                    times[name] = float("nan")
                    continue
                tb = kv_bytes(batches[name][5]) / (us * 1e-6) / 1e12
                rows.append(dict(stage=stage, config=label, shape=name, us=us, tbps=tb, items=items, chunk=chunk))
                times[name] = us
        ok = [t for t in times.values() if not math.isnan(t)]
        geo = math.exp(sum(math.log(t) for t in ok) / len(ok)) if len(ok) == len(times) else float("nan")
        print(f"{stage} {label:>44}: geo {geo:8.1f} us  " + " ".join(f"{n}={t:.1f}" for n, t in times.items()), flush=True)
        return geo, times

    # Stage 1: the decode block shape for D=128 (BLOCK_N, warps, stages).
    shapes = []
    for block_n, warps, stages in itertools.product(args.block_n, args.warps, args.stages):
        buffers = max(1, (stages - 1) // 2)  # K/V buffers of a paged loop (see --stages)
        if block_n * D * 2 * 2 * buffers > info.shared_memory:  # K + V tiles per buffer, bf16
            continue
        shapes.append((block_n, warps, stages))
    best = None
    for block_n, warps, stages in shapes:
        if time.time() - t0 > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s reached: the remaining shapes are not measured")
            break
        decode = dict(base.decode)
        decode[128] = config.BlockShape(16, block_n, warps, stages)
        label = f"bn{block_n} w{warps} s{stages}"
        geo, _ = run_all("shape", label, decode=decode)
        if not math.isnan(geo) and (best is None or geo < best[0]):
            best = (geo, decode, label)
    print(f"best shape: {best[2]} (geo {best[0]:.1f} us)")
    # Stage 2: the split policy with the best shape.
    for ppc, fill, min_chunk, skew in itertools.product(args.ppc, args.fill, args.min_chunk, (4,)):
        policy = config.SplitPolicy(ppc, fill, min_chunk, skew)
        run_all("split", f"ppc{ppc} fill{fill} min{min_chunk} skew{skew}", decode=best[1], decode_split=policy)
    command = "PYTHONPATH=. python3 benchmarks/tune_decode.py " + " ".join(sys.argv[1:])
    path = write_results(f"decode-{family}", rows, command, extra={"copy_ceiling_tbps": ceiling, "best_shape": best[2]},
                         directory=os.path.join(RESULTS_DIR, "tune"))
    print(f"sweep rows: {path}")


if __name__ == "__main__":
    main()
