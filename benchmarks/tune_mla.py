"""Sweep this GPU's MLA table (block shape, warps, stages, then the split-KV policy) through the real
plan/run path (``config.mla_table_override``) on DeepSeek shapes: 128 heads, ckv 512 + kpe 64, page
64, bf16, causal. Every measurement is appended to ``benchmarks/results/tune/mla-<family>.json``
(GPU, versions, date, command); the MLA table in ``flashinfer_triton/attention/config.py`` then
cites that file (a shape it adopts joins the AOT list, which is built from the table). A
configuration that fails to compile or launch is reported and recorded as failed.

    PYTHONPATH=. python3 benchmarks/tune_mla.py [--reps 20] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_mla import D_CKV, D_KPE, DTYPE, HEADS, SM_SCALE, Caches, flops  # noqa: E402
from benchmarks.harness import RESULTS_DIR, time_graph, write_partial_on_sigterm, write_results  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton.attention import config  # noqa: E402
from flashinfer_triton.attention.device import device_info  # noqa: E402

PAGE = 64
# name -> (batch, kv_len, q_len)
SHAPES = {"1x4096": (1, 4096, 1), "1x32768": (1, 32768, 1), "16x4096": (16, 4096, 1), "16x32768": (16, 32768, 1),
          "64x16384": (64, 16384, 1), "128x32768": (128, 32768, 1), "16x4096 q2": (16, 4096, 2)}
BLOCKS = [(64, 32, 8, 2), (64, 32, 8, 3), (64, 64, 8, 2), (64, 64, 8, 1), (64, 32, 8, 1), (64, 16, 8, 3),
          (64, 16, 8, 2), (64, 32, 4, 2)]
SPLITS = [(1, 1, 128), (1, 1, 256), (1, 1, 512), (1, 1, 1024), (1, 1, 2048), (2, 2, 256)]  # (programs/CU, fill, min chunk)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=240.0, help="no new configuration starts after this long")
    ap.add_argument("--blocks", nargs="+", default=None, metavar="M,N,W,S",
                    help="block shapes to sweep (BLOCK_M,BLOCK_N,warps,stages); default: BLOCKS")
    ap.add_argument("--shapes", nargs="+", default=None, choices=sorted(SHAPES), help="problem shapes (default all)")
    args = ap.parse_args()
    blocks = [tuple(int(v) for v in b.split(",")) for b in args.blocks] if args.blocks else BLOCKS
    shapes = {name: SHAPES[name] for name in (args.shapes or SHAPES)}
    info = device_info(torch.device("cuda"))
    family = info.family
    base = config.mla_table_for(info)
    caches = Caches((PAGE,), max(s[0] for s in shapes.values()), max(s[1] for s in shapes.values()))
    gen = torch.Generator(device="cuda").manual_seed(1)
    batches = {name: caches.batch(PAGE, b, n, q, gen) for name, (b, n, q) in shapes.items()}
    ws = torch.zeros(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    write_partial_on_sigterm(f"mla-{family}", rows, "benchmarks/tune_mla.py", os.path.join(RESULTS_DIR, "tune"))
    t0 = time.time()

    def run_all(stage, label, **fields):
        times = {}
        with config.mla_table_override(family, **fields):
            for name, (ckv, kpe, qo, kv_indptr, ids, kv_len_arr, q_nope, q_pe) in batches.items():
                try:
                    w = flashinfer_triton.BatchMLAPagedAttentionWrapper(ws)
                    w.plan(qo, kv_indptr, ids, kv_len_arr, HEADS, D_CKV, D_KPE, PAGE, True, SM_SCALE, DTYPE, DTYPE)
                    out = torch.empty_like(q_nope)
                    us = time_graph(lambda: w.run(q_nope, q_pe, ckv, kpe, out=out), reps=args.reps, warmup=3)
                except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
                    print(f"  FAILED {label} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                    rows.append(dict(stage=stage, config=label, shape=name,
                                     failed=f"{type(exc).__name__}: {exc}"[:300]))
                    times[name] = float("nan")
                    continue
                plan = w.launcher.plan
                rows.append(dict(stage=stage, config=label, shape=name, us=us,
                                 tflops=flops(*SHAPES[name]) / (us * 1e-6) / 1e12, items=plan.num_items,
                                 chunk=plan.chunk_size))
                times[name] = us
        ok = [t for t in times.values() if not math.isnan(t)]
        geo = math.exp(sum(math.log(t) for t in ok) / len(ok)) if len(ok) == len(times) else float("nan")
        print(f"{stage} {label:>28}: geo {geo:8.1f} us  " + " ".join(f"{n}={t:.1f}" for n, t in times.items()),
              flush=True)
        return geo

    # Stage 1: the block shape (BLOCK_M, BLOCK_N, warps, stages) under the table's split policy.
    best = None
    for block in blocks:
        if time.time() - t0 > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s reached: the remaining shapes are not measured")
            break
        shape = config.BlockShape(*block)
        geo = run_all("shape", "M{} N{} w{} s{}".format(*block), shape=shape)
        if not math.isnan(geo) and (best is None or geo < best[0]):
            best = (geo, shape)
    if best is None:
        print("no block shape ran")
        return
    print(f"best shape: {best[1]} (geo {best[0]:.1f} us)")
    # Stage 2: the split policy with the best shape.
    for ppc, fill, min_chunk in SPLITS:
        policy = config.SplitPolicy(ppc, fill, min_chunk, base.split.skew_factor)
        run_all("split", f"ppc{ppc} fill{fill} min{min_chunk}", shape=best[1], split=policy)
    command = "PYTHONPATH=. python3 benchmarks/tune_mla.py " + " ".join(sys.argv[1:])
    path = write_results(f"mla-{family}", rows, command, extra={"best_shape": str(best[1])},
                         directory=os.path.join(RESULTS_DIR, "tune"))
    print(f"sweep rows: {path}")


if __name__ == "__main__":
    main()
