"""Norm, RoPE and gated activation kernels side by side with FlashInfer (same process); sampling has
its own benchmarks/bench_sampling.py.

    PYTHONPATH=. python3 benchmarks/bench_ops.py [--quick]

Kernel time comes from CUDA-graph replay with the L2 flushed before each replay (eager timing when
an op cannot be captured). Bandwidth counts the bytes each op must move at least (inputs read
once, outputs written once) and is compared with the measured device copy ceiling. bf16 inputs.
Rows go to benchmarks/results/ops.json; the markdown table is printed and, when $OUT is set,
written to $OUT/ops.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from harness import (  # noqa: E402
    copy_ceiling_tbps,
    geomean,
    host_time,
    markdown_table,
    time_eager,
    time_graph,
    try_import_flashinfer,
    write_results,
)

import flashinfer_triton  # noqa: E402

DTYPE = torch.bfloat16
BYTES = 2  # bf16


def _time(fn, reps):
    """(microseconds, how): graph replay, or eager events when capture fails."""
    try:
        return time_graph(fn, reps=reps), "graph"
    except Exception as exc:  # noqa: BLE001
        print(f"  [graph capture failed: {type(exc).__name__}: {str(exc)[:120]}; timing eagerly]")
        torch.cuda.synchronize()
        return time_eager(fn, reps=reps), "eager"


class Bench:
    def __init__(self, fi, reps):
        self.fi = fi
        self.reps = reps
        self.rows = []

    def run(self, op, batch, size, nbytes, ours, theirs):
        """``ours``/``theirs``: zero-argument callables (``theirs`` None when the peer is absent)."""
        for system, fn in (("flashinfer_triton", ours), ("flashinfer", theirs)):
            if fn is None:
                continue
            try:
                fn()  # first call: JIT compile outside the timed region
                torch.cuda.synchronize()
                us, how = _time(fn, self.reps)
            except Exception as exc:  # noqa: BLE001 - a failing peer skips its row only
                print(f"  skip {system} {op} batch={batch} size={size}: {type(exc).__name__}: {str(exc)[:200]}")
                if system == "flashinfer_triton":
                    traceback.print_exc()
                torch.cuda.synchronize()
                continue
            tbps = nbytes / (us * 1e-6) / 1e12
            self.rows.append(dict(system=system, op=op, batch=batch, size=size, us=us, tbps=tbps, bytes=nbytes, timing=how))
            print(f"  {system:18s} {op:28s} batch={batch:<6} size={size:<8} {us:9.2f} us {tbps:6.3f} TB/s ({how})")


    def host(self, op, batch, size, ours, theirs):
        """Host time of one eager call (microseconds; not waiting for the GPU): rows with no bytes."""
        for system, fn in (("flashinfer_triton", ours), ("flashinfer", theirs)):
            if fn is None:
                continue
            us = host_time(fn)
            self.rows.append(dict(system=system, op=op, batch=batch, size=size, us=us, tbps=0.0, bytes=0, timing="host"))
            print(f"  {system:18s} {op:28s} batch={batch:<6} size={size:<8} {us:9.2f} us host")


def bench_norm(b, batches, hiddens):
    fi = b.fi
    for hidden in hiddens:
        w = torch.randn(hidden, dtype=DTYPE, device="cuda")
        for batch in batches:
            x = torch.randn(batch, hidden, dtype=DTYPE, device="cuda")
            out = torch.empty_like(x)
            nbytes = 2 * batch * hidden * BYTES + hidden * BYTES
            b.run("rmsnorm", batch, hidden, nbytes,
                  lambda: flashinfer_triton.rmsnorm(x, w, 1e-6, out=out),
                  (lambda: fi.rmsnorm(x, w, 1e-6, out=out)) if fi else None)
            xi = torch.randn(batch, hidden, dtype=DTYPE, device="cuda")
            r = torch.randn(batch, hidden, dtype=DTYPE, device="cuda")
            nbytes = 4 * batch * hidden * BYTES + hidden * BYTES
            b.run("fused_add_rmsnorm", batch, hidden, nbytes,
                  lambda: flashinfer_triton.fused_add_rmsnorm(xi, r, w, 1e-6),
                  (lambda: fi.fused_add_rmsnorm(xi, r, w, 1e-6)) if fi else None)
            del x, out, xi, r


def bench_rope(b, nnzs, hq=32, hk=8, d=128):
    fi = b.fi
    for nnz in nnzs:
        q = torch.randn(nnz, hq, d, dtype=DTYPE, device="cuda")
        k = torch.randn(nnz, hk, d, dtype=DTYPE, device="cuda")
        pos = torch.randint(0, 32768, (nnz,), dtype=torch.int32, device="cuda")
        nbytes = 2 * nnz * (hq + hk) * d * BYTES + nnz * 4
        ours = lambda: flashinfer_triton.apply_rope_pos_ids(q, k, pos)  # noqa: E731
        theirs = (lambda: fi.apply_rope_pos_ids(q, k, pos)) if fi else None
        b.run("apply_rope_pos_ids", nnz, f"{hq}/{hk}x{d}", nbytes, ours, theirs)
        if nnz <= 1024:  # eager callers (no CUDA graph) pay the host time of each call
            b.host("apply_rope_pos_ids host", nnz, f"{hq}/{hk}x{d}", ours, theirs)
        del q, k, pos


def bench_silu(b, tokens_list, d=14336):
    fi = b.fi
    for tokens in tokens_list:
        x = torch.randn(tokens, 2 * d, dtype=DTYPE, device="cuda")
        out = torch.empty(tokens, d, dtype=DTYPE, device="cuda")
        nbytes = 3 * tokens * d * BYTES
        b.run("silu_and_mul", tokens, d, nbytes,
              lambda: flashinfer_triton.silu_and_mul(x, out=out),
              (lambda: fi.silu_and_mul(x, out=out)) if fi else None)
        del x, out


def report(rows, ceiling):
    ours = {(r["op"], r["batch"], str(r["size"])): r for r in rows if r["system"] == "flashinfer_triton"}
    peer = {(r["op"], r["batch"], str(r["size"])): r for r in rows if r["system"] == "flashinfer"}
    table, speedups = [], {}
    for key in list(ours) + [k for k in peer if k not in ours]:
        o, p = ours.get(key), peer.get(key)
        speedup = p["us"] / o["us"] if (o and p) else None
        if o is not None:
            o["pct_of_copy"] = o["tbps"] / ceiling
            if speedup is not None:
                o["speedup_vs_flashinfer"] = speedup
                speedups.setdefault(key[0], []).append(speedup)
        if p is not None:
            p["pct_of_copy"] = p["tbps"] / ceiling
        moved = (o or p)["bytes"] > 0  # host-time rows move no bytes
        table.append([
            key[0], key[1], key[2],
            o["us"] if o else "-", o["tbps"] if o and moved else "-",
            f"{100 * o['tbps'] / ceiling:.0f}%" if o and moved else "-",
            p["us"] if p else "-", p["tbps"] if p and moved else "-",
            f"{speedup:.2f}x" if speedup else "-",
        ])
    header = ["op", "batch", "size", "ours us", "ours TB/s", "ours % copy", "flashinfer us", "flashinfer TB/s", "speedup"]
    text = f"Copy ceiling {ceiling:.2f} TB/s (bf16 inputs)\n\n" + markdown_table(header, table)
    if speedups:
        text += "\n\n" + markdown_table(
            ["op", "geomean speedup vs FlashInfer", "rows"],
            [[op, f"{geomean(v):.2f}x", len(v)] for op, v in speedups.items()],
        )
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    parser.add_argument("--only", default="", help="comma-separated sections: norm,rope,silu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_ops needs a GPU")
        return
    torch.manual_seed(0)
    fi = try_import_flashinfer()
    reps = 30 if args.quick else 100
    b = Bench(fi, reps)
    ceiling = copy_ceiling_tbps()
    print(f"copy ceiling: {ceiling:.3f} TB/s")
    sections = [
        ("norm", lambda: bench_norm(b, [1, 19, 99, 989, 4096], [4096, 8192])),
        ("rope", lambda: bench_rope(b, [1, 16, 128, 1024, 8192, 65536] if not args.quick else [1, 1024, 65536])),
        ("silu", lambda: bench_silu(b, [1, 16, 128, 1024, 4096, 16384] if not args.quick else [1, 1024, 16384])),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        sections = [(name, fn) for name, fn in sections if name in wanted]
    for name, fn in sections:
        print(f"[{name}]")
        try:
            fn()
        except Exception:  # noqa: BLE001 - one section failing keeps the others
            traceback.print_exc()
        torch.cuda.empty_cache()
    text = report(b.rows, ceiling)
    command = "PYTHONPATH=. python3 benchmarks/bench_ops.py" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    path = write_results("ops", b.rows, command, extra={"copy_ceiling_tbps": ceiling})
    print(text)
    print(f"\nwrote {path}")
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "ops.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
