"""Paged batch decode: flashinfer_triton beside FlashInfer (tensor cores off and on) and SDPA.

32 query heads, 8 KV heads, head_dim 128, page 16, bfloat16; batch x KV length grid, a skewed batch
and batch 1 x 128k. Kernel time under CUDA-graph replay (L2 flushed before each replay), KV read
bandwidth, eager host time per run() and plan().

    PYTHONPATH=. python3 benchmarks/bench_decode.py [--plot] [--quick] [--sweep]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import (  # noqa: E402
    copy_ceiling_tbps, environment, geomean, host_time, markdown_table, time_graph, try_import_flashinfer, write_results,
)
import flashinfer_triton  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16


def grid(quick: bool):
    rows = []
    for b in (1, 16, 64, 256):
        for n in (512, 2048, 8192, 32768):
            if b * n <= 2 * 1024 * 1024:
                rows.append((f"{b}x{n}", [n] * b))
    if quick:
        rows = [r for r in rows if r[0] in ("1x512", "16x8192", "64x32768", "256x8192")]
    gen = torch.Generator().manual_seed(0)
    # Skewed batch: Zipf-like lengths (a few long requests, many short), max 32k.
    ranks = torch.arange(1, 65, dtype=torch.float64)
    lens = (32768 / ranks ** 1.1).clamp(min=16).round().long()
    lens = lens[torch.randperm(64, generator=gen)].tolist()
    rows.append(("skew64", lens))
    rows.append(("1x131072", [131072]))
    return rows


def make_batch(lens, device="cuda"):
    pages = [(n + PAGE - 1) // PAGE for n in lens]
    total = sum(pages)
    cache = torch.randn(total, 2, PAGE, HKV, D, dtype=DTYPE, device=device)
    ids = torch.randperm(total, device=device).to(torch.int32)
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(pages).cumsum(0)
    last = torch.tensor([n - (p - 1) * PAGE for n, p in zip(lens, pages)], dtype=torch.int32)
    q = torch.randn(len(lens), HQ, D, dtype=DTYPE, device=device)
    return cache, indptr.to(device), ids, last.to(device), q


def kv_bytes(lens):
    return sum(lens) * 2 * HKV * D * 2 + 2 * len(lens) * HQ * D * 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the decode benchmark needs one (make demo runs the CPU demo instead).")
        return
    fi = try_import_flashinfer()
    ceiling = copy_ceiling_tbps()
    print(f"copy ceiling {ceiling:.2f} TB/s (read + write)")
    ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows, table = [], []
    ratios = []
    for name, lens in grid(args.quick):
        cache, indptr, indices, last, q = make_batch(lens)
        nbytes = kv_bytes(lens)
        res = {}
        ours = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
        ours.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        out = torch.empty_like(q)
        res["flashinfer_triton"] = time_graph(lambda: ours.run(q, cache, out=out), reps=args.reps)
        host_run = host_time(lambda: ours.run(q, cache, out=out))
        host_plan = host_time(lambda: ours.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE), reps=50)
        # FlashInfer's users (vLLM, SGLang) pass indptr and last_page_len on the host, page ids on the device.
        indptr_h, last_h = indptr.cpu(), last.cpu()
        host_plan_cpu = host_time(lambda: ours.plan(indptr_h, indices, last_h, HQ, HKV, D, PAGE, q_data_type=DTYPE),
                                  reps=50)
        ours.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        ref = ours.run(q, cache)
        fi_host_run = fi_host_plan = fi_host_plan_cpu = float("nan")
        if fi is not None:
            for tc, label in ((False, "flashinfer"), (True, "flashinfer_tc")):
                try:
                    w = fi.BatchDecodeWithPagedKVCacheWrapper(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"), "NHD",
                                                              use_tensor_cores=tc)
                    w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, kv_data_type=DTYPE)
                    o_fi = torch.empty_like(q)
                    w.run(q, cache, out=o_fi)
                    err = (o_fi.float() - ref.float()).abs().max().item()
                    if err > 5e-2:
                        print(f"  WARNING {name}: {label} and flashinfer_triton differ by {err:.3g}")
                    res[label] = time_graph(lambda: w.run(q, cache, out=o_fi), reps=args.reps)
                    if not tc:
                        fi_host_run = host_time(lambda: w.run(q, cache, out=o_fi))
                        fi_host_plan = host_time(lambda: w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE,
                                                                kv_data_type=DTYPE), reps=50)
                        fi_host_plan_cpu = host_time(lambda: w.plan(indptr_h, indices, last_h, HQ, HKV, D, PAGE,
                                                                    q_data_type=DTYPE, kv_data_type=DTYPE), reps=50)
                except Exception as exc:  # noqa: BLE001
                    print(f"  {label} failed on {name}: {type(exc).__name__}: {exc}")
        if len(set(lens)) == 1 and sum(lens) <= 1 << 20:
            try:
                k = cache[:, 0].reshape(len(lens), -1, HKV, D)[:, : lens[0]].transpose(1, 2).contiguous()
                v = cache[:, 1].reshape(len(lens), -1, HKV, D)[:, : lens[0]].transpose(1, 2).contiguous()
                qq = q.unsqueeze(2)
                res["sdpa"] = time_graph(lambda: torch.nn.functional.scaled_dot_product_attention(qq, k, v, enable_gqa=True),
                                         reps=args.reps)
                del k, v
            except Exception as exc:  # noqa: BLE001
                print(f"  sdpa failed on {name}: {type(exc).__name__}: {exc}")
        best_fi = min([res[s] for s in ("flashinfer", "flashinfer_tc") if s in res], default=float("nan"))
        ratio = best_fi / res["flashinfer_triton"] if not math.isnan(best_fi) else float("nan")
        if not math.isnan(ratio):
            ratios.append(ratio)
        for system, us in res.items():
            rows.append(dict(system=system, batch=len(lens), kv_len=max(lens), total_kv=sum(lens), name=name, us=us,
                             tbps=nbytes / (us * 1e-6) / 1e12))
        rows.append(dict(system="flashinfer_triton", name=name, batch=len(lens), kv_len=max(lens), kind="host",
                         run_host_us=host_run, plan_host_us=host_plan, fi_run_host_us=fi_host_run, fi_plan_host_us=fi_host_plan,
                         plan_host_cpu_tables_us=host_plan_cpu, fi_plan_host_cpu_tables_us=fi_host_plan_cpu))
        tb = nbytes / (res["flashinfer_triton"] * 1e-6) / 1e12
        table.append([name, res["flashinfer_triton"], tb, res.get("flashinfer", float("nan")), res.get("flashinfer_tc", float("nan")),
                      nbytes / (best_fi * 1e-6) / 1e12 if not math.isnan(best_fi) else float("nan"), ratio,
                      res.get("sdpa", float("nan")), host_run, fi_host_run, host_plan, fi_host_plan, host_plan_cpu,
                      fi_host_plan_cpu])
        print(f"{name:>10}: ours {res['flashinfer_triton']:.1f} us ({tb:.2f} TB/s)  fi {res.get('flashinfer', float('nan')):.1f}  "
              f"fi_tc {res.get('flashinfer_tc', float('nan')):.1f}  speedup {ratio:.3f}  host run {host_run:.1f} us plan {host_plan:.1f} us",
              flush=True)
        del cache
        torch.cuda.empty_cache()
    header = ["batch", "ours us", "ours TB/s", "FI us", "FI tc us", "FI best TB/s", "FI best / ours", "sdpa us",
              "run host us", "FI run host us", "plan host us", "FI plan host us", "plan host us (CPU tables)",
              "FI plan host us (CPU tables)"]
    md = markdown_table(header, table)
    env = environment()
    summary = (f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}; "
               f"copy ceiling {ceiling:.2f} TB/s; geometric-mean speedup vs best FlashInfer {geomean(ratios):.3f}, "
               f"min {min(ratios) if ratios else float('nan'):.3f}")
    print(md)
    print(summary)
    cmd = "PYTHONPATH=. python3 benchmarks/bench_decode.py " + " ".join(sys.argv[1:])
    write_results("decode", rows, cmd, extra={"copy_ceiling_tbps": ceiling, "summary": summary})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "decode.md"), "w") as f:
            f.write(md + "\n\n" + summary + "\n")
    if args.plot:
        plot(table, ceiling, os.path.join(out_dir or os.path.join(os.path.dirname(__file__), "results"), "decode.png"))


def plot(table, ceiling, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    names = [r[0] for r in table]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    ax.bar([i - 0.2 for i in x], [r[2] for r in table], width=0.4, label="flashinfer_triton")
    ax.bar([i + 0.2 for i in x], [r[5] for r in table], width=0.4, label="FlashInfer (best of tc on/off)")
    ax.axhline(ceiling, color="k", linestyle="--", label=f"copy ceiling {ceiling:.2f} TB/s")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("KV read bandwidth (TB/s)")
    ax.set_title("Paged decode, 32/8 heads, D=128, page 16, bf16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
