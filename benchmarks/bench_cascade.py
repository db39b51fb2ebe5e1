"""Cascade attention on a shared prefix: flashinfer_triton beside FlashInfer in one process.

32 query heads, 8 KV heads, head_dim 128, page 16, bfloat16. Every request's KV is a shared prefix
(its pages exist once in the cache and every request's page table points at the same ids) plus a
unique suffix. Systems per case:

- ``flashinfer_triton_cascade``: our MultiLevelCascadeAttentionWrapper, 2 levels (split_shared_prefix)
- ``flashinfer_triton_decode`` / ``flashinfer_triton_prefill``: our plain batch wrapper over the full
  per-request page tables (prefix pages shared by id)
- ``flashinfer_cascade``, ``flashinfer_decode`` (tensor cores off and on) / ``flashinfer_prefill``: the same in
  FlashInfer

Kernel time under CUDA-graph replay with the L2 flushed before each replay (``time_graph``); a wrapper
that cannot be captured falls back to ``time_eager`` and its row says ``timing: eager``.

    PYTHONPATH=. python3 benchmarks/bench_cascade.py [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import (  # noqa: E402
    environment, host_time, markdown_table, time_eager, time_graph, try_import_flashinfer, write_results,
)
import flashinfer_triton  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
WS_BYTES = 256 << 20

# (kind, batch, prefix_len, suffix_len, query tokens per request); the suffix holds the queries.
CASES = [
    ("decode", 64, 8192, 256, 1),
    ("decode", 256, 32768, 128, 1),
    ("prefill", 16, 8192, 128, 128),
]


def make_batch(batch, prefix_len, suffix_len, qo_len, device="cuda"):
    """One cache holding the prefix pages once plus each request's suffix pages, page ids shuffled.
    Returns the cache, q and the full per-request page tables (CSR, int32 on the device)."""
    assert prefix_len % PAGE == 0, "the shared prefix is whole pages"
    p_pages = prefix_len // PAGE
    s_pages = -(-suffix_len // PAGE)
    total = p_pages + batch * s_pages
    cache = torch.randn(total, 2, PAGE, HKV, D, dtype=DTYPE, device=device)
    perm = torch.randperm(total, device=device).to(torch.int32)
    prefix_ids = perm[:p_pages]
    suffix_ids = perm[p_pages:].view(batch, s_pages)
    indices = torch.cat([prefix_ids.expand(batch, p_pages), suffix_ids], dim=1).reshape(-1).contiguous()
    indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * (p_pages + s_pages)
    last = torch.full((batch,), suffix_len - (s_pages - 1) * PAGE, dtype=torch.int32, device=device)
    qo_indptr = torch.arange(batch + 1, dtype=torch.int32, device=device) * qo_len
    q = torch.randn(batch * qo_len, HQ, D, dtype=DTYPE, device=device)
    return cache, q, qo_indptr, indptr, indices, last


def timed(fn, reps):
    """(us, "graph") under CUDA-graph replay, or (us, "eager") when ``fn`` cannot be captured."""
    try:
        return time_graph(fn, reps=reps), "graph"
    except Exception as exc:  # noqa: BLE001
        print(f"    graph capture failed ({type(exc).__name__}: {exc}); timing eagerly")
        torch.cuda.synchronize()
        return time_eager(fn, reps=reps), "eager"


def check(name, label, got, ref):
    err = (got.float() - ref.float()).abs().max().item()
    if not err <= 5e-2:
        print(f"  WARNING {name}: {label} differs from flashinfer_triton's plain wrapper by {err:.3g}")
    return err


def run_case(kind, batch, prefix_len, suffix_len, qo_len, fi, reps):
    name = f"{kind} {batch}x({prefix_len}+{suffix_len})"
    causal = kind == "prefill"
    cache, q, qo_indptr, indptr, indices, last = make_batch(batch, prefix_len, suffix_len, qo_len)
    ws = torch.empty(WS_BYTES, dtype=torch.uint8, device="cuda")
    res = {}  # system -> (us, timing, variant)

    # Ours, plain: the full page tables (prefix read once per request).
    out_plain = torch.empty_like(q)
    if kind == "decode":
        plain = flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper(ws)
        plain.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE)
        plain_sys = "flashinfer_triton_decode"
    else:
        plain = flashinfer_triton.BatchPrefillWithPagedKVCacheWrapper(ws)
        plain.plan(qo_indptr, indptr, indices, last, HQ, HKV, D, PAGE, causal=causal, q_data_type=DTYPE)
        plain_sys = "flashinfer_triton_prefill"
    plain.run(q, cache, out=out_plain)
    res[plain_sys] = timed(lambda: plain.run(q, cache, out=out_plain), reps) + ("",)

    # Ours, cascade: level 0 = the shared prefix for all query rows, level 1 = each suffix.
    levels = flashinfer_triton.split_shared_prefix(indptr, indices, last, PAGE,
                                                   qo_indptr=None if kind == "decode" else qo_indptr)
    assert levels.num_shared_pages == prefix_len // PAGE, (levels.num_shared_pages, prefix_len // PAGE)
    casc = flashinfer_triton.MultiLevelCascadeAttentionWrapper(2, ws)
    casc.plan(*levels, HQ, HKV, D, PAGE, causal=causal, q_data_type=DTYPE)
    out_casc = torch.empty_like(q)
    casc.run(q, cache, out=out_casc)
    check(name, "flashinfer_triton_cascade", out_casc, out_plain)
    res["flashinfer_triton_cascade"] = timed(lambda: casc.run(q, cache, out=out_casc), reps) + ("",)
    host_run = host_time(lambda: casc.run(q, cache, out=out_casc), reps=100)
    host_plan = host_time(lambda: casc.plan(*levels, HQ, HKV, D, PAGE, causal=causal, q_data_type=DTYPE), reps=30)

    if fi is not None:
        fi_ws = torch.empty(WS_BYTES, dtype=torch.uint8, device="cuda")
        try:
            w = fi.MultiLevelCascadeAttentionWrapper(2, fi_ws, "NHD")
            w.plan(list(levels.qo_indptr_arr), list(levels.paged_kv_indptr_arr), list(levels.paged_kv_indices_arr),
                   list(levels.paged_kv_last_page_len_arr), HQ, HKV, D, PAGE, causal=causal, q_data_type=DTYPE,
                   kv_data_type=DTYPE)
            check(name, "flashinfer_cascade", w.run(q, cache), out_plain)
            res["flashinfer_cascade"] = timed(lambda: w.run(q, cache), reps) + ("",)
        except Exception as exc:  # noqa: BLE001
            print(f"  flashinfer_cascade failed on {name}: {type(exc).__name__}: {exc}")
        variants = ((False, "tc_off"), (True, "tc_on")) if kind == "decode" else ((None, "auto"),)
        for tc, variant in variants:
            try:
                if kind == "decode":
                    wd = fi.BatchDecodeWithPagedKVCacheWrapper(fi_ws, "NHD", use_tensor_cores=tc)
                    wd.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=DTYPE, kv_data_type=DTYPE)
                    system = "flashinfer_decode"
                else:
                    wd = fi.BatchPrefillWithPagedKVCacheWrapper(fi_ws, "NHD")
                    wd.plan(qo_indptr, indptr, indices, last, HQ, HKV, D, PAGE, causal=causal, q_data_type=DTYPE,
                            kv_data_type=DTYPE)
                    system = "flashinfer_prefill"
                o_fi = torch.empty_like(q)
                wd.run(q, cache, out=o_fi)
                check(name, f"{system} ({variant})", o_fi, out_plain)
                us, timing = timed(lambda: wd.run(q, cache, out=o_fi), reps)
                key = system if system not in res or us < res[system][0] else None
                if key:
                    res[key] = (us, timing, variant)
            except Exception as exc:  # noqa: BLE001
                print(f"  FlashInfer plain {variant} failed on {name}: {type(exc).__name__}: {exc}")
        del fi_ws
    del cache, ws
    torch.cuda.empty_cache()
    return name, res, host_run, host_plan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only the first decode case")
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the cascade benchmark needs one.")
        return
    fi = try_import_flashinfer()
    torch.manual_seed(0)
    cases = CASES[:1] if args.quick else CASES
    rows, table = [], []
    for kind, batch, prefix_len, suffix_len, qo_len in cases:
        name, res, host_run, host_plan = run_case(kind, batch, prefix_len, suffix_len, qo_len, fi, args.reps)
        for system, (us, timing, variant) in res.items():
            row = dict(system=system, kind=kind, batch=batch, prefix_len=prefix_len, suffix_len=suffix_len,
                       qo_len=qo_len, us=us, timing=timing)
            if variant:
                row["variant"] = variant
            rows.append(row)
        rows.append(dict(system="flashinfer_triton_cascade", kind=kind, batch=batch, prefix_len=prefix_len,
                         suffix_len=suffix_len, qo_len=qo_len, measure="host", run_host_us=host_run,
                         plan_host_us=host_plan))
        plain_sys = "decode" if kind == "decode" else "prefill"

        def us(system):
            v = res.get(system)
            return v[0] if v else float("nan")

        def mark(system):
            v = res.get(system)
            return "" if not v or v[1] == "graph" else " (eager)"

        ours = us("flashinfer_triton_cascade")
        fi_c = us("flashinfer_cascade")
        table.append([name, f"{ours:.1f}{mark('flashinfer_triton_cascade')}",
                      f"{us('flashinfer_triton_' + plain_sys):.1f}{mark('flashinfer_triton_' + plain_sys)}",
                      f"{fi_c:.1f}{mark('flashinfer_cascade')}",
                      f"{us('flashinfer_' + plain_sys):.1f}{mark('flashinfer_' + plain_sys)}",
                      fi_c / ours if not math.isnan(fi_c) else float("nan"),
                      us("flashinfer_triton_" + plain_sys) / ours, host_run, host_plan])
        print(f"{name}: " + "  ".join(f"{s} {v[0]:.1f} us{'' if v[1] == 'graph' else ' (eager)'}"
                                      for s, v in res.items()), flush=True)
    header = ["case", "ours cascade us", "ours plain us", "FI cascade us", "FI plain us (best)",
              "FI cascade / ours cascade", "ours plain / ours cascade", "ours run host us", "ours plan host us"]
    md = markdown_table(header, table)
    env = environment()
    summary = (f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}; "
               f"{HQ}/{HKV} heads, D {D}, page {PAGE}, bf16; kernel time under CUDA-graph replay, L2 flushed "
               f"(rows marked eager could not be captured)")
    print(md)
    print(summary)
    cmd = "PYTHONPATH=. python3 benchmarks/bench_cascade.py " + " ".join(sys.argv[1:])
    write_results("cascade", rows, cmd, extra={"summary": summary})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "cascade.md"), "w") as f:
            f.write(md + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
