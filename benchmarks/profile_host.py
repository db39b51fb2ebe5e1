"""Host-time profile of decode plan() and run() (cProfile), to see where eager microseconds go.

    PYTHONPATH=. python3 benchmarks/profile_host.py
"""

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
    for lens in ([8192] * 16, [512]):
        cache, indptr, indices, last, q = make_batch(lens)
        w = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(torch.empty(128 << 20, dtype=torch.uint8, device="cuda"))
        w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        out = torch.empty_like(q)
        run = lambda: w.run(q, cache, out=out)  # noqa: E731
        plan = lambda: w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)  # noqa: E731
        print(f"batch {len(lens)}: run host {host_time(run):.1f} us, plan host {host_time(plan, reps=50):.1f} us")
        host_idx, host_ptr, host_last = indices.cpu(), indptr.cpu(), last.cpu()
        plan_cpu = lambda: w.plan(host_ptr, host_idx, host_last, HQ, HKV, D, PAGE, q_data_type=DTYPE)  # noqa: E731
        print(f"batch {len(lens)}: plan host with CPU page table {host_time(plan_cpu, reps=50):.1f} us")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        run()
    torch.cuda.synchronize()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(300):
        plan()
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
