"""Host cost of checked mode (``flashinfer_triton.checked()``): the value checks it adds before
``append_paged_kv_cache`` and the RoPE launches, at serving sizes. The checks are timed on their
own (what checked mode adds to a call; the default path only reads a module flag).

    PYTHONPATH=. python3 benchmarks/checked_mode_cost.py          # CUDA if available, else CPU

On a GPU each check includes its synchronizations (the checks read values back to the host).
"""

from __future__ import annotations

import statistics
import time

import torch

from flashinfer_triton import _checks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _time_us(fn, reps=50):
    fn()
    samples = []
    for _ in range(reps):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def _table(batch, seq, page_size, new):
    """A page table of ``batch`` requests of ``seq`` tokens after appending ``new`` rows each."""
    pages = (seq + page_size - 1) // page_size
    i32 = dict(dtype=torch.int32, device=DEVICE)
    kv_indptr = torch.arange(batch + 1, **i32) * pages
    kv_indices = torch.randperm(batch * pages, device=DEVICE).to(torch.int32)
    last = torch.full((batch,), (seq - 1) % page_size + 1, **i32)
    batch_indices = torch.arange(batch, **i32).repeat_interleave(new)
    positions = (torch.arange(new, **i32) + seq - new).repeat(batch)
    return kv_indptr, kv_indices, last, batch_indices, positions, batch * pages


def main():
    torch.manual_seed(0)
    rows = []
    for label, batch, seq, new in (("decode", 256, 2048, 1), ("prefill", 16, 4096, 512)):
        kv_indptr, kv_indices, last, b, p, num_pages = _table(batch, seq, 16, new)

        def append_checks():
            _checks.check_paged_kv(kv_indptr, kv_indices, last, 16, num_pages)
            _checks.check_positions("positions", p, b, kv_indptr, last, 16)

        rows.append((f"append_paged_kv_cache {label}: batch {batch} x {seq} tokens, page 16, {b.numel()} rows",
                     _time_us(append_checks)))
    for nnz in (256, 8192):
        positions = torch.randint(0, 131072, (nnz,), device=DEVICE)
        rows.append((f"apply_rope_with_cos_sin_cache: {nnz} tokens, cache of 131072 rows",
                     _time_us(lambda: _checks.check_in_range("positions", positions, 0, 131072, "a row"))))
        indptr = torch.linspace(0, nnz, 257, device=DEVICE).to(torch.int32)
        rows.append((f"apply_rope (indptr/offsets): {nnz} tokens in 256 requests",
                     _time_us(lambda: _checks.check_indptr("indptr", indptr, total=nnz))))
    print(f"checked-mode host cost on {DEVICE} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    for what, us in rows:
        print(f"  {us:9.1f} us  {what}")
    flag = _time_us(lambda: _checks.ENABLED, reps=1000)
    print(f"  {flag:9.3f} us  default mode: reading the flag (timer overhead included)")


if __name__ == "__main__":
    main()
