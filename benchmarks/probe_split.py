"""Where the time of a split decode goes (diagnostic, H200): one request's KV cut into chunks of a
fixed size, timed three ways through the same plan: as planned (chunk programs write partials, the
last one merges); with the merge skipped (``num_chunks`` raised so no program is last: partials and
the counter atomic, no merge); and with every program writing its result directly (no partial, no
atomic, no merge). Differences between the three give the merge's and the partial handoff's cost.
The skipped variants give wrong outputs on purpose; they only time. Rows go to
``benchmarks/results/tune/split-probe-<family>.json``.

    PYTHONPATH=. python3 benchmarks/probe_split.py [--reps 20]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_decode import D, DTYPE, HKV, HQ, PAGE, make_batch  # noqa: E402
from benchmarks.harness import RESULTS_DIR, time_graph, write_results  # noqa: E402
import flashinfer_triton  # noqa: E402
from flashinfer_triton.attention.device import device_info  # noqa: E402
from flashinfer_triton.attention.signature import PLAN_ARGS  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--lens", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--chunks", type=int, nargs="+", default=[128, 256, 512, 1024, 2048], help="chunk sizes in tokens")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for batch in args.batch:
        for n in args.lens:
            cache, indptr, indices, last, q = make_batch([n] * batch)
            for chunk in [c for c in args.chunks if c < n] + [0]:
                w = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
                w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE,
                       fixed_split_size=chunk // PAGE if chunk else None, disable_split_kv=chunk == 0)
                out = torch.empty_like(q)
                meta = dict(zip(PLAN_ARGS, w.planned.launcher.plan_args))
                num_chunks, part_base = meta["item_num_chunks_ptr"], meta["item_part_base_ptr"]
                saved = num_chunks.clone(), part_base.clone()
                row = dict(shape=f"{batch}x{n}", chunk=chunk, items=w.planned.plan.num_items)
                row["planned_us"] = time_graph(lambda: w.run(q, cache, out=out), reps=args.reps, warmup=3)
                if chunk:
                    num_chunks.fill_(1 << 30)
                    row["no_merge_us"] = time_graph(lambda: w.run(q, cache, out=out), reps=args.reps, warmup=3)
                    num_chunks.copy_(saved[0])
                    part_base.fill_(-1)
                    row["direct_us"] = time_graph(lambda: w.run(q, cache, out=out), reps=args.reps, warmup=3)
                    part_base.copy_(saved[1])
                print(row, flush=True)
                rows.append(row)
    family = device_info(torch.device("cuda")).family
    command = "PYTHONPATH=. python3 benchmarks/probe_split.py " + " ".join(sys.argv[1:])
    print("rows:", write_results(f"split-probe-{family}", rows, command, directory=os.path.join(RESULTS_DIR, "tune")))


if __name__ == "__main__":
    main()
