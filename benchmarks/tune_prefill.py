"""Sweep prefill launch configurations (BLOCK_M, BLOCK_N, warps, stages) for causal ragged prefill,
32/8 heads, bf16, to pick the table in kernels/attention.py. Prints TFLOP/s per config.

    PYTHONPATH=. python3 benchmarks/tune_prefill.py [--shapes 16x512,8x2048]
"""

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import time_graph  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton import prefill  # noqa: E402

HQ, HKV = 32, 8


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="", help="batch x length list for D=128, e.g. 16x512,8x2048")
    args = ap.parse_args()
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    original = prefill.prefill_block_config
    shapes = [(128, 1, 4096), (128, 1, 16384), (64, 1, 4096), (256, 1, 4096)]
    if args.shapes:
        shapes = [(128, int(b), int(n)) for b, n in (s.split("x") for s in args.shapes.split(","))]
    for d, batch, n in shapes:
        q = torch.randn(batch * n, HQ, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(batch * n, HKV, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(batch * n, HKV, d, dtype=torch.bfloat16, device="cuda")
        ind = torch.arange(0, batch + 1, dtype=torch.int32, device="cuda") * n
        flops = batch * 4 * HQ * d * (n * n - n * (n - 1) / 2)
        res = []
        for bm, bn, warps, stages in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3)):
            if d == 256 and bn == 128:
                continue
            prefill.prefill_block_config = lambda g, hd, q, c=(bm, bn, warps, stages): c
            try:
                w = flashinfer_triton.BatchPrefillWithRaggedKVCacheWrapper(ws)
                w.plan(ind, ind, HQ, HKV, d, causal=True, q_data_type=torch.bfloat16)
                out = torch.empty_like(q)
                us = time_graph(lambda: w.run(q, k, v, out=out), reps=10, warmup=2)
                res.append((flops / us / 1e6, bm, bn, warps, stages))
            except Exception as exc:  # noqa: BLE001
                print(f"d{d} n{n} {bm}/{bn}/{warps}/{stages}: {type(exc).__name__} {str(exc)[:80]}")
        res.sort(reverse=True)
        print(f"d={d} {batch}x{n}: " + "  ".join(f"{t:.0f}TF@{bm}/{bn}/w{w}/s{s}" for t, bm, bn, w, s in res[:6]), flush=True)
    prefill.prefill_block_config = original


if __name__ == "__main__":
    main()
