"""Sweep the prefill block shapes of this GPU's config table (BLOCK_M, BLOCK_N, warps, stages) for
causal ragged prefill, 32/8 heads, bf16, through the real plan/run path (``config.table_override``).
Each configuration is measured on every shape; rows (TFLOP/s, causal counted as half) are appended
to ``benchmarks/results/tune/prefill-<family>.json``, which the table in
``flashinfer_triton/attention/config.py`` cites. Failures are reported and recorded, not skipped.

    PYTHONPATH=. python3 benchmarks/tune_prefill.py [--shapes 1x4096,8x2048] [--head-dim 128]
        [--block-m 128 64] [--block-n 64 128 32] [--warps 8 4] [--stages 2 3 4]
"""

import argparse
import itertools
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_prefill import HKV, HQ, causal_flops, make_ragged  # noqa: E402
from benchmarks.harness import RESULTS_DIR, time_graph, write_results  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton.attention import config  # noqa: E402
from flashinfer_triton.attention.device import device_info  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="1x1024,1x4096,1x16384,8x2048,16x512")
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=200.0)
    ap.add_argument("--block-m", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--block-n", type=int, nargs="+", default=[64, 128, 32])
    ap.add_argument("--warps", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3, 4])
    args = ap.parse_args()
    d = args.head_dim
    family = device_info(torch.device("cuda")).family
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    data = {}
    for b, n in shapes:
        q, k, v, qo, kv = make_ragged([n] * b, [n] * b, d)
        data[(b, n)] = (q, k, v, qo, kv, torch.empty_like(q), causal_flops([n] * b, [n] * b, d))
    rows, t0 = [], time.time()
    best = {}
    for bm, bn, warps, stages in itertools.product(args.block_m, args.block_n, args.warps, args.stages):
        if time.time() - t0 > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s reached: the remaining shapes are not measured")
            break
        if (bm * d + 2 * bn * d * stages) * 2 > 232448 or (d == 256 and bn == 128):
            continue
        label = f"{bm}/{bn}/w{warps}/s{stages}"
        prefill = dict(config.TABLES.get(family, config.TABLES["default"]).prefill)
        prefill[config.block_d(d)] = ((0, 0, config.BlockShape(bm, bn, warps, stages)),)
        line = []
        with config.table_override(family, prefill=prefill):
            for (b, n), (q, k, v, qo, kv, out, flops) in data.items():
                try:
                    w = flashinfer_triton.BatchPrefillWithRaggedKVCacheWrapper(ws)
                    w.plan(qo, kv, HQ, HKV, d, causal=True, q_data_type=torch.bfloat16)
                    us = time_graph(lambda: w.run(q, k, v, out=out), reps=args.reps, warmup=2)
                except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
                    print(f"  FAILED {label} {b}x{n}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    rows.append(dict(config=label, shape=f"{b}x{n}", head_dim=d, failed=f"{type(exc).__name__}: {exc}"[:300]))
                    continue
                tf = flops / (us * 1e-6) / 1e12
                rows.append(dict(config=label, shape=f"{b}x{n}", head_dim=d, us=us, tflops=tf))
                line.append(f"{b}x{n}={tf:.0f}")
                if best.get((b, n), (0,))[0] < tf:
                    best[(b, n)] = (tf, label)
        print(f"d={d} {label:>14}: " + " ".join(line), flush=True)
    for (b, n), (tf, label) in best.items():
        print(f"BEST d={d} {b}x{n}: {tf:.0f} TFLOP/s at {label}")
    command = "PYTHONPATH=. python3 benchmarks/tune_prefill.py " + " ".join(sys.argv[1:])
    print("sweep rows:", write_results(f"prefill-{family}", rows, command, directory=os.path.join(RESULTS_DIR, "tune")))


if __name__ == "__main__":
    main()
