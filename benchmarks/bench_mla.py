"""MLA attention on a paged cache: flashinfer_triton's BatchMLAPagedAttentionWrapper beside FlashInfer's
(backends fa2 and fa3, when importable) in the same process.

DeepSeek sizes: 128 heads, ckv 512 + kpe 64, bf16, sm_scale 1/sqrt(192); page 64 (and 1); batch
{1, 16, 64, 128} x KV length {1k, 4k, 16k, 32k}; q_len 1 (decode) and 2 (speculative verify, causal).
Kernel time under CUDA-graph replay with the L2 flushed before each replay; KV TB/s (ckv + kpe read
once, plus q and out) against the measured copy ceiling; TFLOP/s (2 * (576 + 512) per visible key,
query and head) against a measured bf16 matmul rate. Each FlashInfer output is compared with ours.
Rows stop being added once ``--budget`` seconds have passed (FlashInfer's JIT included).

    PYTHONPATH=. python3 benchmarks/bench_mla.py [--quick] [--budget 170] [--reps 20] [--pages 64,1]
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
    copy_ceiling_tbps, environment, geomean, markdown_table, time_graph, try_import_flashinfer,
    write_partial_on_sigterm, write_results,
)
import flashinfer_triton  # noqa: E402

HEADS, D_CKV, D_KPE = 128, 512, 64
DTYPE = torch.bfloat16
SM_SCALE = 1.0 / math.sqrt(128 + 64)
BATCHES = (1, 16, 64, 128)
KV_LENS = (1024, 4096, 16384, 32768)
Q_LENS = (1, 2)


def matmul_ceiling_tflops() -> float:
    """Measured bf16 matrix rate (8192^3 GEMM), TFLOP/s."""
    n = 8192
    a = torch.randn(n, n, dtype=DTYPE, device="cuda")
    b = torch.randn(n, n, dtype=DTYPE, device="cuda")
    c = torch.empty(n, n, dtype=DTYPE, device="cuda")
    us = time_graph(lambda: torch.matmul(a, b, out=c), reps=10, warmup=3, flush_l2=False)
    return 2 * n ** 3 / (us * 1e-6) / 1e12


def flops(batch, kv_len, q_len):
    visible = sum(kv_len - q_len + 1 + i for i in range(q_len))  # causal, bottom-right
    return 2 * (D_CKV + D_KPE + D_CKV) * HEADS * visible * batch


def nbytes(batch, kv_len, q_len):
    return batch * (kv_len * (D_CKV + D_KPE) + q_len * HEADS * (D_CKV + D_KPE + D_CKV)) * DTYPE.itemsize


class Caches:
    """One ckv/kpe cache per page size, sized for the largest batch x length, shared by all rows."""

    def __init__(self, page_sizes, max_batch, max_kv_len):
        gen = torch.Generator(device="cuda").manual_seed(0)
        self.by_page = {}
        for ps in page_sizes:
            pages = max_batch * -(-max_kv_len // ps)
            ckv = torch.randn(pages, ps, D_CKV, dtype=DTYPE, device="cuda", generator=gen)
            kpe = torch.randn(pages, ps, D_KPE, dtype=DTYPE, device="cuda", generator=gen)
            self.by_page[ps] = (ckv, kpe)

    def batch(self, ps, batch, kv_len, q_len, gen):
        ckv, kpe = self.by_page[ps]
        per_req = -(-kv_len // ps)
        ids = torch.randperm(ckv.shape[0], device="cuda", generator=gen)[: batch * per_req].to(torch.int32)
        i32 = dict(dtype=torch.int32, device="cuda")
        qo_indptr = torch.arange(0, batch * q_len + 1, q_len, **i32)
        kv_indptr = torch.arange(0, batch * per_req + 1, per_req, **i32)
        kv_len_arr = torch.full((batch,), kv_len, **i32)
        q_nope = torch.randn(batch * q_len, HEADS, D_CKV, dtype=DTYPE, device="cuda", generator=gen)
        q_pe = torch.randn(batch * q_len, HEADS, D_KPE, dtype=DTYPE, device="cuda", generator=gen)
        return ckv, kpe, qo_indptr, kv_indptr, ids, kv_len_arr, q_nope, q_pe


def time_wrapper(wrapper, plan_args, q_nope, q_pe, ckv, kpe, reps):
    wrapper.plan(*plan_args)
    out = torch.empty_like(q_nope)
    wrapper.run(q_nope, q_pe, ckv, kpe, out=out)
    us = time_graph(lambda: wrapper.run(q_nope, q_pe, ckv, kpe, out=out), reps=reps)
    return us, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch {1, 64} x kv {4k, 32k}, page 64 only")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds after which no new row starts")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--pages", default="64,1", help="page sizes, comma separated")
    ap.add_argument("--backends", default="fa2,fa3", help="FlashInfer backends beside ours (empty: none)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the MLA benchmark needs one.")
        return
    t_start = time.time()
    batches, kv_lens = ((1, 64), (4096, 32768)) if args.quick else (BATCHES, KV_LENS)
    page_sizes = (64,) if args.quick else tuple(int(p) for p in args.pages.split(","))
    fi = try_import_flashinfer() if args.backends else None
    backends = [b for b in args.backends.split(",") if b] if fi is not None else []
    copy_tbps, mma_tflops = copy_ceiling_tbps(), matmul_ceiling_tflops()
    print(f"ceilings: copy {copy_tbps:.2f} TB/s (read + write), bf16 matmul {mma_tflops:.0f} TFLOP/s", flush=True)
    caches = Caches(page_sizes, max(batches), max(kv_lens))
    ws = torch.zeros(256 << 20, dtype=torch.uint8, device="cuda")
    ours = flashinfer_triton.BatchMLAPagedAttentionWrapper(ws)
    peers = {}
    for b in backends:
        try:
            peers[b] = fi.BatchMLAPagedAttentionWrapper(torch.zeros(128 << 20, dtype=torch.uint8, device="cuda"),
                                                        backend=b)
        except Exception as exc:  # noqa: BLE001
            print(f"FlashInfer backend {b} unavailable: {type(exc).__name__}: {exc}")
    gen = torch.Generator(device="cuda").manual_seed(1)
    rows, table, ratios, skipped = [], [], [], []
    write_partial_on_sigterm("mla", rows, "benchmarks/bench_mla.py")
    for ps in page_sizes:
        for q_len in Q_LENS:
            for batch in batches:
                for kv_len in kv_lens:
                    name = f"p{ps} q{q_len} {batch}x{kv_len}"
                    if time.time() - t_start > args.budget:
                        skipped.append(name)
                        continue
                    ckv, kpe, qo, kv_indptr, ids, kv_len_arr, q_nope, q_pe = caches.batch(ps, batch, kv_len, q_len, gen)
                    plan_args = (qo, kv_indptr, ids, kv_len_arr, HEADS, D_CKV, D_KPE, ps, True, SM_SCALE, DTYPE, DTYPE)
                    res = {}
                    res["flashinfer_triton"], ref = time_wrapper(ours, plan_args, q_nope, q_pe, ckv, kpe, args.reps)
                    errs = {}
                    for label, w in peers.items():
                        try:
                            res[f"fi_{label}"], o = time_wrapper(w, plan_args, q_nope, q_pe, ckv, kpe, args.reps)
                            errs[label] = (o.float() - ref.float()).abs().max().item()
                            if errs[label] > 5e-2:
                                print(f"  WARNING {name}: FlashInfer {label} and flashinfer_triton differ by "
                                      f"{errs[label]:.3g}")
                        except Exception as exc:  # noqa: BLE001
                            print(f"  FlashInfer {label} failed on {name}: {type(exc).__name__}: {exc}")
                    fl, nb = flops(batch, kv_len, q_len), nbytes(batch, kv_len, q_len)
                    for system, us in res.items():
                        tb, tf = nb / (us * 1e-6) / 1e12, fl / (us * 1e-6) / 1e12
                        rows.append(dict(system=system, page_size=ps, q_len=q_len, batch=batch, kv_len=kv_len, us=us,
                                         kv_tbps=tb, tflops=tf, frac_copy=tb / copy_tbps, frac_mma=tf / mma_tflops,
                                         max_abs_diff=errs.get(system[3:]) if system != "flashinfer_triton" else 0.0))
                    us = res["flashinfer_triton"]
                    best = min([res[k] for k in res if k != "flashinfer_triton"], default=float("nan"))
                    ratio = best / us
                    if not math.isnan(ratio):
                        ratios.append(ratio)
                    table.append([name, us, nb / (us * 1e-6) / 1e12, fl / (us * 1e-6) / 1e12,
                                  fl / (us * 1e-6) / 1e12 / mma_tflops, res.get("fi_fa2", float("nan")),
                                  res.get("fi_fa3", float("nan")), ratio])
                    print(f"{name:>18}: ours {us:8.1f} us {table[-1][2]:.2f} TB/s {table[-1][3]:4.0f} TFLOP/s | fa2 "
                          f"{res.get('fi_fa2', float('nan')):8.1f} fa3 {res.get('fi_fa3', float('nan')):8.1f} | "
                          f"best FI / ours {ratio:.3f}", flush=True)
                    del q_nope, q_pe, ids
    header = ["case", "ours us", "ours TB/s", "ours TFLOP/s", "ours / matmul", "FI fa2 us", "FI fa3 us",
              "FI best / ours"]
    md = markdown_table(header, table)
    env = environment()
    summary = (f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}; "
               f"ceilings: copy {copy_tbps:.2f} TB/s, bf16 matmul {mma_tflops:.0f} TFLOP/s; {HEADS} heads, bf16, "
               f"causal; geometric-mean speedup vs best FlashInfer {geomean(ratios):.3f}, "
               f"min {min(ratios) if ratios else float('nan'):.3f}; {time.time() - t_start:.0f} s"
               + (f"; {len(skipped)} rows past the budget skipped" if skipped else ""))
    print(md)
    print(summary)
    cmd = "PYTHONPATH=. python3 benchmarks/bench_mla.py " + " ".join(sys.argv[1:])
    write_results("mla", rows, cmd, extra={"copy_ceiling_tbps": copy_tbps, "matmul_ceiling_tflops": mma_tflops,
                                           "summary": summary, "skipped": skipped})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "mla.md"), "w") as f:
            f.write(md + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
