"""Sweep decode launch configurations (BLOCK_N, warps, stages, split target) on a few shapes, to pick
the table in kernels/attention.py. Prints the best per shape.

    PYTHONPATH=. python3 benchmarks/tune_decode.py
"""

from __future__ import annotations

import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_decode import D, DTYPE, HKV, HQ, PAGE, kv_bytes, make_batch  # noqa: E402
from benchmarks.harness import time_graph  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton import _scheduler, decode  # noqa: E402

SHAPES = {"1x512": [512], "16x8192": [8192] * 16, "64x32768": [32768] * 64, "256x2048": [2048] * 256,
          "1x131072": [131072]}


def main():
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    original = decode.decode_block_config
    results = {}
    for name, lens in SHAPES.items():
        cache, indptr, indices, last, q = make_batch(lens)
        out = torch.empty_like(q)
        best = None
        for bn, warps, stages, ppc in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3, 4), (2, 4, 8)):
            if bn == 128 and warps == 2:
                continue
            decode.decode_block_config = lambda g, d, bn=bn, w=warps, s=stages: (max(16, triton_pow2(g)), bn, w, s)
            _scheduler.PROGRAMS_PER_CU = ppc
            try:
                w = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
                w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
                us = time_graph(lambda: w.run(q, cache, out=out), reps=20, warmup=2)
            except Exception as exc:  # noqa: BLE001
                print(f"{name} bn={bn} w={warps} s={stages} ppc={ppc}: {type(exc).__name__}")
                continue
            tb = kv_bytes(lens) / (us * 1e-6) / 1e12
            results[(name, bn, warps, stages, ppc)] = us
            if best is None or us < best[0]:
                best = (us, bn, warps, stages, ppc, tb)
        print(f"BEST {name}: {best[0]:.1f} us {best[5]:.2f} TB/s  BLOCK_N={best[1]} warps={best[2]} stages={best[3]} ppc={best[4]}",
              flush=True)
        del cache
        torch.cuda.empty_cache()
    decode.decode_block_config = original
    # Configs ranked by geometric-mean time over shapes.
    import math

    keys = sorted({k[1:] for k in results})
    scored = []
    for k in keys:
        ts = [results.get((n,) + k) for n in SHAPES]
        if all(t is not None for t in ts):
            scored.append((math.exp(sum(math.log(t) for t in ts) / len(ts)), k, ts))
    scored.sort()
    for s, k, ts in scored[:10]:
        print(f"geo {s:.1f}  BLOCK_N={k[0]} warps={k[1]} stages={k[2]} ppc={k[3]}  " + " ".join(f"{t:.1f}" for t in ts))


def triton_pow2(n):
    return 1 << (n - 1).bit_length() if n > 1 else 1


if __name__ == "__main__":
    main()
