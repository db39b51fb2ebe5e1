"""Compile FlashInfer's JIT modules that the serving demo and the benchmarks use, several at once.

FlashInfer builds some kernels with nvcc on first use (up to a minute each, one after another in a
process). A fresh GPU machine has none cached, so this starts one process per group of modules,
with the dtypes and head dims of ``examples/serve.py`` (bfloat16, 32/8 heads x 128, page 16, float32
logits), and they compile side by side while other work runs. Later processes on the machine find
them in FlashInfer's cache.

    PYTHONPATH=. python3 benchmarks/warm_flashinfer.py [--parts sampling ops decode prefill cascade]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

HQ, HKV, D, PAGE, DTYPE = 32, 8, 128, 16, torch.bfloat16


def _paged(dtype, device, batch=2, pages_each=3):
    cache = torch.randn(batch * pages_each, 2, PAGE, HKV, D, dtype=dtype, device=device)
    indptr = torch.arange(0, batch * pages_each + 1, pages_each, dtype=torch.int32)
    indices = torch.arange(batch * pages_each, dtype=torch.int32, device=device)
    last = torch.full((batch,), PAGE, dtype=torch.int32)
    return cache, indptr, indices, last


def part(name: str, module: str = "flashinfer", dev: str = "cuda") -> None:
    import importlib

    fi = importlib.import_module(module)
    dtype = DTYPE if dev == "cuda" else torch.float16  # (a CPU dry run of the calls: the interpreter has no bf16)
    ws = lambda: torch.empty(128 << 20, dtype=torch.uint8, device=dev)  # noqa: E731
    if name == "sampling":
        logits = torch.randn(4, 128256, device=dev)
        probs = fi.softmax(logits, temperature=0.7)
        fi.top_k_top_p_sampling_from_probs(probs, 50, 0.9)
        fi.top_k_sampling_from_probs(fi.softmax(logits), 1)
    elif name == "ops":
        x = torch.randn(4, 4096, dtype=dtype, device=dev)
        w = torch.ones(4096, dtype=dtype, device=dev)
        fi.rmsnorm(x, w, 1e-5)
        fi.fused_add_rmsnorm(x, x.clone(), w, 1e-5)
        fi.silu_and_mul(torch.randn(4, 2 * 14336, dtype=dtype, device=dev))
        q = torch.randn(4, HQ, D, dtype=dtype, device=dev)
        k = torch.randn(4, HKV, D, dtype=dtype, device=dev)
        pos = torch.arange(4, dtype=torch.int32, device=dev)
        fi.apply_llama31_rope_pos_ids_inplace(q, k, pos, rope_scale=8.0, rope_theta=500000.0)
        fi.apply_rope_pos_ids_inplace(q, k, pos, rope_theta=500000.0)
        cache, indptr, indices, last = _paged(dtype, dev)
        fi.append_paged_kv_cache(k, k, torch.tensor([0, 0, 1, 1], dtype=torch.int32, device=dev), pos, cache,
                                 indices, indptr.to(dev), last.to(dev))
    elif name == "decode":
        cache, indptr, indices, last = _paged(dtype, dev)
        for tc in (True, False):
            w = fi.BatchDecodeWithPagedKVCacheWrapper(ws(), "NHD", use_tensor_cores=tc)
            w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=dtype)
            w.run(torch.randn(2, HQ, D, dtype=dtype, device=dev), cache)
    elif name == "prefill":
        cache, indptr, indices, last = _paged(dtype, dev)
        qo = torch.tensor([0, 5, 9], dtype=torch.int32)
        for backend in ("auto", "fa2", "fa3"):
            w = fi.BatchPrefillWithPagedKVCacheWrapper(ws(), "NHD", backend=backend)
            w.plan(qo, indptr, indices, last, HQ, HKV, D, PAGE, causal=True, q_data_type=dtype)
            w.run(torch.randn(9, HQ, D, dtype=dtype, device=dev), cache)
    elif name == "cascade":
        cache, indptr, indices, last = _paged(dtype, dev)
        w = fi.MultiLevelCascadeAttentionWrapper(2, ws(), "NHD")
        i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
        # level 0: page 0 shared by both requests' queries; level 1: each request's own pages
        w.plan([i32(0, 2), i32(0, 1, 2)], [i32(0, 1), i32(0, 2, 4)], [indices[:1].contiguous(), indices[1:5].contiguous()],
               [i32(PAGE), i32(PAGE, PAGE)], HQ, HKV, D, PAGE, causal=True, q_data_type=dtype)
        w.run(torch.randn(2, HQ, D, dtype=dtype, device=dev), cache)
    else:
        raise SystemExit(f"unknown part {name}")
    if dev == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["sampling", "ops", "decode", "prefill", "cascade"])
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--dry-run-cpu", action="store_true", help="make the calls on flashinfer_triton on the CPU (checks them)")
    args = ap.parse_args()
    if args.dry_run_cpu:
        for p in args.parts:
            part(p, "flashinfer_triton", "cpu")
            print(f"warm_flashinfer: {p} calls ok on flashinfer_triton (CPU)")
        return
    if args.part:
        part(args.part)
        return
    t0 = time.time()
    procs = {p: subprocess.Popen([sys.executable, __file__, "--part", p]) for p in args.parts}
    for p, proc in procs.items():
        rc = proc.wait()
        print(f"warm_flashinfer: {p} {'ok' if rc == 0 else f'FAILED (rc {rc})'} after {time.time() - t0:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
