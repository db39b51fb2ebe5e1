"""Host-time profile of decode plan() and run() (cProfile), to see where eager microseconds go.

    PYTHONPATH=. python3 benchmarks/profile_host.py [--rows 1x8192 16x8192 256x512] [--top 15]
"""

import argparse
import cProfile
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_decode import D, DTYPE, HKV, HQ, PAGE, make_batch  # noqa: E402
from benchmarks.harness import host_time  # noqa: E402
import flashinfer_triton  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=["16x8192", "1x512"], help="batch x KV length")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    for row in args.rows:
        batch, n = map(int, row.split("x"))
        cache, indptr, indices, last, q = make_batch([n] * batch)
        w = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
        w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        out = torch.empty_like(q)
        run = lambda: w.run(q, cache, out=out)  # noqa: E731
        plan = lambda: w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)  # noqa: E731
        host_idx, host_ptr, host_last = indices.cpu(), indptr.cpu(), last.cpu()
        plan_cpu = lambda: w.plan(host_ptr, host_idx, host_last, HQ, HKV, D, PAGE, q_data_type=DTYPE)  # noqa: E731
        print(f"{row}: run host {host_time(run):.1f} us, plan host {host_time(plan, reps=50):.1f} us, "
              f"plan host with CPU page table {host_time(plan_cpu, reps=50):.1f} us ({w.planned.plan.num_items} items)")
        for label, fn, reps in (("run", run, 2000), ("plan", plan, 300), ("plan, CPU page table", plan_cpu, 300)):
            prof = cProfile.Profile()
            prof.enable()
            for i in range(reps):
                fn()
                if i % 20 == 19:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            prof.disable()
            print(f"--- {row} {label}: {reps} calls")
            pstats.Stats(prof).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
