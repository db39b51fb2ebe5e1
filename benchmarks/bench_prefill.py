"""Causal prefill: flashinfer_triton beside FlashInfer (fa2 and fa3 backends) and PyTorch SDPA.

Ragged causal prefill, 32 query / 8 KV heads, head_dim 128, bfloat16, over (batch, length) in
{(1,1024), (1,4096), (1,16384), (8,2048), (16,512)}; head_dim 64 and 256 at (1,4096); paged chunked
prefill (a 512-token chunk after a 16k prefix, page 16). Kernel time under CUDA-graph replay (L2
flushed before each replay) and TFLOP/s with causal counted as half the square:
``flops = 4 * H_qo * D * sum_b (qo_b * kv_b - qo_b * (qo_b - 1) / 2)``.

FlashInfer JIT-compiles each variant on first use (about a minute each): variants not yet compiled
are skipped once ``--budget-s`` seconds have passed, so the run stays within a few minutes.

    PYTHONPATH=. python3 benchmarks/bench_prefill.py [--reps 30] [--budget-s 170]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import (  # noqa: E402
    environment, geomean, markdown_table, time_graph, try_import_flashinfer, write_partial_on_sigterm, write_results,
)
import flashinfer_triton  # noqa: E402

HQ, HKV, PAGE = 32, 8, 16
DTYPE = torch.bfloat16


def configs():
    """(name, kind, head_dim, qo_lens, kv_lens)."""
    rows = []
    for b, n in ((1, 1024), (1, 4096), (1, 16384), (8, 2048), (16, 512)):
        rows.append((f"{b}x{n}", "ragged", 128, [n] * b, [n] * b))
    for d in (64, 256):
        rows.append((f"1x4096-d{d}", "ragged", d, [4096], [4096]))
    rows.append(("chunk512+16k", "paged", 128, [512], [16384 + 512]))
    return rows


def causal_flops(qo_lens, kv_lens, head_dim):
    return 4 * HQ * head_dim * sum(q * k - q * (q - 1) / 2 for q, k in zip(qo_lens, kv_lens))


def indptr(lens, device="cuda"):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def make_ragged(qo_lens, kv_lens, d):
    q = torch.randn(sum(qo_lens), HQ, d, dtype=DTYPE, device="cuda")
    k = torch.randn(sum(kv_lens), HKV, d, dtype=DTYPE, device="cuda")
    v = torch.randn(sum(kv_lens), HKV, d, dtype=DTYPE, device="cuda")
    return q, k, v, indptr(qo_lens), indptr(kv_lens)


def make_paged(qo_lens, kv_lens, d):
    pages = [(n + PAGE - 1) // PAGE for n in kv_lens]
    total = sum(pages)
    cache = torch.randn(total, 2, PAGE, HKV, d, dtype=DTYPE, device="cuda")
    ids = torch.randperm(total, device="cuda").to(torch.int32)
    last = torch.tensor([n - (p - 1) * PAGE for n, p in zip(kv_lens, pages)], dtype=torch.int32, device="cuda")
    q = torch.randn(sum(qo_lens), HQ, d, dtype=DTYPE, device="cuda")
    return q, cache, indptr(qo_lens), indptr(pages), ids, last


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="skip FlashInfer variants that would JIT-compile after this many seconds")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the prefill benchmark needs one.")
        return
    t_start = time.time()
    fi = try_import_flashinfer()
    fi_compiled = set()  # (backend, kind, head_dim) variants already built
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    fi_ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows, table, ratios_fa2, ratios_fa3 = [], [], [], []
    write_partial_on_sigterm("prefill", rows, "benchmarks/bench_prefill.py")
    for name, kind, d, qo_lens, kv_lens in configs():
        flops = causal_flops(qo_lens, kv_lens, d)
        res = {}

        def record(system, us, name=name, kind=kind, d=d, qo_lens=qo_lens, kv_lens=kv_lens, flops=flops, res=res):
            """Keep a measurement at once: a run stopped later (SIGTERM) still writes it."""
            res[system] = us
            rows.append(dict(system=system, batch=len(qo_lens), seq_len=max(kv_lens), qo_len=max(qo_lens), kind=kind,
                             name=name, head_dim=d, us=us, tflops=flops / (us * 1e-6) / 1e12))
        if kind == "ragged":
            q, k, v, qo_indptr, kv_indptr = make_ragged(qo_lens, kv_lens, d)
            ours = flashinfer_triton.BatchPrefillWithRaggedKVCacheWrapper(ws)
            ours.plan(qo_indptr, kv_indptr, HQ, HKV, d, causal=True, q_data_type=DTYPE)
            out = torch.empty(q.shape[0], HQ, d, dtype=DTYPE, device="cuda")
            run_ours = lambda: ours.run(q, k, v, out=out)  # noqa: E731
        else:
            q, cache, qo_indptr, kv_indptr, ids, last = make_paged(qo_lens, kv_lens, d)
            ours = flashinfer_triton.BatchPrefillWithPagedKVCacheWrapper(ws)
            ours.plan(qo_indptr, kv_indptr, ids, last, HQ, HKV, d, PAGE, causal=True, q_data_type=DTYPE)
            out = torch.empty(q.shape[0], HQ, d, dtype=DTYPE, device="cuda")
            run_ours = lambda: ours.run(q, cache, out=out)  # noqa: E731
        run_ours()
        ref = out.clone()
        record("flashinfer_triton", time_graph(run_ours, reps=args.reps))

        if kind == "ragged" and len(set(qo_lens)) == 1 and qo_lens == kv_lens:
            # SDPA's is_causal aligns top-left, which equals bottom-right only for qo_len == kv_len.
            try:
                b, n = len(qo_lens), qo_lens[0]
                qs = q.view(b, n, HQ, d).transpose(1, 2)
                ks_ = k.view(b, n, HKV, d).transpose(1, 2)
                vs_ = v.view(b, n, HKV, d).transpose(1, 2)
                sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
                    qs, ks_, vs_, is_causal=True, enable_gqa=True)
                err = (sdpa().transpose(1, 2).reshape(-1, HQ, d).float() - ref.float()).abs().max().item()
                if err > 5e-2:
                    print(f"  WARNING {name}: sdpa and flashinfer_triton differ by {err:.3g}")
                record("sdpa", time_graph(sdpa, reps=args.reps))
            except Exception as exc:  # noqa: BLE001
                print(f"  sdpa failed on {name}: {type(exc).__name__}: {exc}")

        if fi is not None:
            for backend in ("fa2", "fa3"):
                label = f"flashinfer_{backend}"
                key = (backend, kind, d)
                if key not in fi_compiled and time.time() - t_start > args.budget_s:
                    print(f"  {label} skipped on {name}: time budget spent (variant not compiled yet)")
                    continue
                try:
                    o_fi = torch.empty_like(out)
                    if kind == "ragged":
                        w = fi.BatchPrefillWithRaggedKVCacheWrapper(fi_ws, "NHD", backend=backend)
                        w.plan(qo_indptr, kv_indptr, HQ, HKV, d, causal=True, q_data_type=DTYPE, kv_data_type=DTYPE)
                        fn = lambda w=w, o=o_fi: w.run(q, k, v, out=o)  # noqa: E731
                    else:
                        w = fi.BatchPrefillWithPagedKVCacheWrapper(fi_ws, "NHD", backend=backend)
                        w.plan(qo_indptr, kv_indptr, ids, last, HQ, HKV, d, PAGE, causal=True, q_data_type=DTYPE,
                               kv_data_type=DTYPE)
                        fn = lambda w=w, o=o_fi: w.run(q, cache, out=o)  # noqa: E731
                    fn()
                    torch.cuda.synchronize()
                    fi_compiled.add(key)
                    err = (o_fi.float() - ref.float()).abs().max().item()
                    if err > 5e-2:
                        print(f"  WARNING {name}: {label} and flashinfer_triton differ by {err:.3g}")
                    record(label, time_graph(fn, reps=args.reps))
                except Exception as exc:  # noqa: BLE001
                    print(f"  {label} failed on {name}: {type(exc).__name__}: {exc}")

        tf = {s: flops / (us * 1e-6) / 1e12 for s, us in res.items()}
        ours_us = res["flashinfer_triton"]
        r2 = res["flashinfer_fa2"] / ours_us if "flashinfer_fa2" in res else float("nan")
        r3 = res["flashinfer_fa3"] / ours_us if "flashinfer_fa3" in res else float("nan")
        if not math.isnan(r2):
            ratios_fa2.append(r2)
        if not math.isnan(r3):
            ratios_fa3.append(r3)
        nan = float("nan")
        table.append([name, d, ours_us, tf["flashinfer_triton"], res.get("flashinfer_fa2", nan), tf.get("flashinfer_fa2", nan),
                      res.get("flashinfer_fa3", nan), tf.get("flashinfer_fa3", nan), res.get("sdpa", nan),
                      tf.get("sdpa", nan), r2, r3])
        print(f"{name:>14} d{d}: ours {ours_us:.1f} us ({tf['flashinfer_triton']:.0f} TFLOP/s)  "
              f"fa2 {res.get('flashinfer_fa2', nan):.1f}  fa3 {res.get('flashinfer_fa3', nan):.1f}  "
              f"sdpa {res.get('sdpa', nan):.1f}  [{time.time() - t_start:.0f} s]", flush=True)
        del q, out, ref
        torch.cuda.empty_cache()

    header = ["config", "D", "ours us", "ours TFLOP/s", "fa2 us", "fa2 TFLOP/s", "fa3 us", "fa3 TFLOP/s", "sdpa us",
              "sdpa TFLOP/s", "fa2 / ours", "fa3 / ours"]
    md = markdown_table(header, table)
    env = environment()
    summary = (f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}; "
               f"32/8 heads, bf16, causal; geometric-mean speedup vs fa2 {geomean(ratios_fa2):.3f}, "
               f"vs fa3 {geomean(ratios_fa3):.3f} (time ratio, > 1 means flashinfer_triton is faster)")
    print(md)
    print(summary)
    cmd = "PYTHONPATH=. python3 benchmarks/bench_prefill.py " + " ".join(sys.argv[1:])
    write_results("prefill", rows, cmd, extra={"summary": summary})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "prefill.md"), "w") as f:
            f.write(md + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
