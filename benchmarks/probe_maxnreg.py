"""Does capping the attention kernel's registers pay (diagnostic, NVIDIA)? ptxas gives the decode
configuration (16x128, 4 warps, 2 stages) 252 registers a thread: two programs per SM by registers,
where its 73 KB of shared memory would allow three. This times the decode rows with Triton's
``maxnreg`` launch option at several caps (spills, if any, go to local memory) through the real
plan/run path. Rows go to ``benchmarks/results/tune/maxnreg-<family>.json``.

    PYTHONPATH=. python3 benchmarks/probe_maxnreg.py [--reps 20]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_decode import D, DTYPE, HKV, HQ, PAGE, kv_bytes, make_batch  # noqa: E402
from benchmarks.harness import RESULTS_DIR, time_graph, write_results  # noqa: E402
from benchmarks.tune_decode import SHAPES, skew64  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton.attention import launcher as launcher_module  # noqa: E402
from flashinfer_triton.attention.device import device_info  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--caps", type=int, nargs="+", default=[0, 168, 128])
    ap.add_argument("--shapes", nargs="+", default=["1x512", "1x2048", "1x8192", "16x512", "256x512", "64x8192",
                                                    "16x32768", "1x131072", "skew64"])
    args = ap.parse_args()
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    batches = {n: make_batch(SHAPES.get(n) or skew64()) + (SHAPES.get(n) or skew64(),) for n in args.shapes}
    rows = []
    for cap in args.caps:
        def capped_launch(kernel, grid, largs, constexprs, num_warps, num_stages, key, prehashed=False, cap=cap):
            extra = {"maxnreg": cap} if cap else {}
            kernel[grid](*largs, **constexprs, num_warps=num_warps, num_stages=num_stages, **extra)
        launcher_module.launch = capped_launch
        line = []
        for name, (cache, indptr, indices, last, q, lens) in batches.items():
            w = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
            w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
            out = torch.empty_like(q)
            us = time_graph(lambda: w.run(q, cache, out=out), reps=args.reps, warmup=3)
            rows.append(dict(maxnreg=cap or None, shape=name, us=us, tbps=kv_bytes(lens) / (us * 1e-6) / 1e12,
                             items=w.planned.plan.num_items))
            line.append(f"{name}={us:.1f}")
        print(f"maxnreg {cap or 'none':>4}: " + " ".join(line), flush=True)
    family = device_info(torch.device("cuda")).family
    command = "PYTHONPATH=. python3 benchmarks/probe_maxnreg.py " + " ".join(sys.argv[1:])
    print("rows:", write_results(f"maxnreg-{family}", rows, command, directory=os.path.join(RESULTS_DIR, "tune")))


if __name__ == "__main__":
    main()
