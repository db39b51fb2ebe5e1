"""Block-sparse attention: flashinfer_triton's sparse wrappers beside FlashInfer's (fa2, fa3) and our dense prefill.

Sequence 8k and 32k (``--seq-lens``), 32 query / 8 KV heads, head_dim 128, bfloat16. Patterns:

- ``bsr64``: 64x64 blocks, not causal; every row block attends to ``round(density * NB)`` random
  column blocks, densities 5, 10, 30, 50 and 100 % (``BlockSparseAttentionWrapper``).
- ``vertical-slash``: R = 64, C = 1, causal; ``--vertical`` key columns every row block sees (those
  before its band) and a band of ``--band`` keys ending at its diagonal (MInference's pattern).
- ``variable``: ``VariableBlockSparseAttentionWrapper``, per KV head its own jittered partition of
  rows and columns into blocks of 32-224 tokens (128 on average), 30 % of the blocks kept.
- ``dense``: our ``single_prefill_with_kv_cache`` (not causal), the baseline of "density x dense".

Kernel time under CUDA-graph replay (L2 flushed before each replay); ``tflops_effective`` counts the
visible elements of the attention matrix, ``4 * H_qo * D * visible`` FLOPs. The summary fits our
``bsr64`` times at densities >= 10 % as ``overhead + slope * density`` and gives each row's time over
``density x dense``. FlashInfer JIT-compiles a module per backend on first use: a backend not yet
compiled is skipped once ``--budget-s`` seconds have passed.

    PYTHONPATH=. python3 benchmarks/bench_sparse.py [--seq-lens 8192 32768] [--reps 15] [--budget-s 120] [--plot]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import (  # noqa: E402
    RESULTS_DIR, environment, markdown_table, time_eager, time_graph, try_import_flashinfer,
    write_partial_on_sigterm, write_results,
)
import flashinfer_triton  # noqa: E402

HQ, HKV, D = 32, 8, 128
DEVICE = "cuda"
DTYPE = torch.bfloat16
DENSITIES = (0.05, 0.1, 0.3, 0.5, 1.0)
BACKENDS = ("fa2", "fa3")


def bsr_random(seq_len, block, density, gen):
    """Each row block keeps ``round(density * NB)`` random column blocks (sorted): exact density."""
    nb = seq_len // block
    keep = max(1, round(density * nb))
    cols = torch.rand(nb, nb, generator=gen).argsort(dim=1)[:, :keep].sort(dim=1).values
    indptr = torch.arange(nb + 1, dtype=torch.int32) * keep
    return indptr, cols.reshape(-1).to(torch.int32), keep * nb * block * block


def vertical_slash(seq_len, rows, n_vertical, band, gen):
    """R = rows, C = 1 lists: the vertical columns before the band, then the band up to the diagonal.
    Returns (indptr, indices, visible elements under causal-in-the-list)."""
    vertical = torch.randperm(seq_len, generator=gen)[:n_vertical].sort().values
    indptr, parts, visible = [0], [], 0
    for b in range(-(-seq_len // rows)):
        end = min((b + 1) * rows, seq_len)
        lo = max(0, end - band)
        cols = torch.cat([vertical[vertical < lo], torch.arange(lo, end)])
        parts.append(cols)
        indptr.append(indptr[-1] + cols.numel())
        qo, kv = end - b * rows, cols.numel()
        visible += qo * kv - qo * (qo - 1) // 2
    return torch.tensor(indptr, dtype=torch.int32), torch.cat(parts).to(torch.int32), visible


def jittered_sizes(total, blocks, gen):
    """``blocks`` sizes summing to ``total``: a uniform grid with cut points moved by up to 3/8 of a block."""
    step = total // blocks
    jitter = torch.randint(-(3 * step // 8), 3 * step // 8 + 1, (blocks - 1,), generator=gen)
    cuts = torch.cat([torch.tensor([0]), torch.arange(1, blocks) * step + jitter, torch.tensor([total])])
    return cuts.diff()


def variable_pattern(seq_len, gen, block=128, density=0.3):
    blocks = seq_len // block
    row_sz = torch.stack([jittered_sizes(seq_len, blocks, gen) for _ in range(HKV)]).to(torch.int32)
    col_sz = torch.stack([jittered_sizes(seq_len, blocks, gen) for _ in range(HKV)]).to(torch.int32)
    mask = torch.rand(HKV, blocks, blocks, generator=gen) < density
    visible = int((mask * row_sz[:, :, None].long() * col_sz[:, None, :].long()).sum()) // HKV
    return mask, row_sz, col_sz, visible


def measure(fn, reps):
    """Graph-replay time, or eager time where the call cannot be captured."""
    try:
        return time_graph(fn, reps=reps), "graph"
    except Exception as exc:  # noqa: BLE001
        print(f"    (not capturable: {type(exc).__name__}: {exc}; eager timing)")
        torch.cuda.synchronize()
        return time_eager(fn, reps=reps), "eager"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--budget-s", type=float, default=120.0,
                    help="skip FlashInfer backends that would JIT-compile after this many seconds")
    ap.add_argument("--vertical", type=int, default=128, help="vertical (dense) key columns")
    ap.add_argument("--band", type=int, default=1024, help="keys of the slash band ending at the diagonal")
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the sparse benchmark needs one.")
        return
    t_start = time.time()
    fi = try_import_flashinfer()
    compiled = set()
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE)
    fi_ws = torch.empty(256 << 20, dtype=torch.uint8, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    rows = []
    write_partial_on_sigterm("sparse", rows, "benchmarks/bench_sparse.py")

    def record(system, seq_len, pattern, density, us, how, visible):
        rows.append(dict(system=system, seq_len=seq_len, pattern=pattern, density=density, us=us,
                         tflops_effective=4 * HQ * D * visible / (us * 1e-6) / 1e12, timing=how,
                         num_qo_heads=HQ, num_kv_heads=HKV, head_dim=D))
        print(f"  {seq_len:>6} {pattern:>15} d={density:.3f} {system:>22}: {us:9.1f} us "
              f"({rows[-1]['tflops_effective']:.0f} TFLOP/s eff.)  [{time.time() - t_start:.0f} s]", flush=True)

    def flashinfer_rows(seq_len, pattern, density, visible, ours_out, make_run):
        """FlashInfer's backends on the same problem; ``make_run(backend)`` plans and returns (run, out)."""
        if fi is None:
            return
        for backend in BACKENDS:
            if backend not in compiled and time.time() - t_start > args.budget_s:
                print(f"    flashinfer_{backend} skipped: time budget spent (not compiled yet)")
                continue
            try:
                fn, out = make_run(backend)
                fn()
                torch.cuda.synchronize()
                compiled.add(backend)
                err = (out.float() - ours_out.float()).abs().max().item()
                if err > 5e-2:
                    print(f"    WARNING flashinfer_{backend} and flashinfer_triton differ by {err:.3g}")
                us, how = measure(fn, args.reps)
                record(f"flashinfer_{backend}", seq_len, pattern, density, us, how, visible)
            except Exception as exc:  # noqa: BLE001
                print(f"    flashinfer_{backend} failed on {pattern}: {type(exc).__name__}: {exc}")

    for seq_len in args.seq_lens:
        q = torch.randn(seq_len, HQ, D, dtype=DTYPE, device=DEVICE)
        k = torch.randn(seq_len, HKV, D, dtype=DTYPE, device=DEVICE)
        v = torch.randn(seq_len, HKV, D, dtype=DTYPE, device=DEVICE)
        dense_out = torch.empty_like(q)
        dense = lambda: flashinfer_triton.single_prefill_with_kv_cache(q, k, v, causal=False)  # noqa: E731
        dense_out.copy_(dense())
        us, how = measure(dense, args.reps)
        record("flashinfer_triton_dense", seq_len, "dense", 1.0, us, how, seq_len * seq_len)

        bsr_cases = [("bsr64", d, 64, 64, False, *bsr_random(seq_len, 64, d, gen)) for d in DENSITIES]
        bsr_cases.append(("vertical-slash", None, 64, 1, True,
                          *vertical_slash(seq_len, 64, args.vertical, args.band, gen)))
        for pattern, density, R, C, causal, indptr, indices, visible in bsr_cases:
            density = visible / seq_len ** 2
            indptr, indices = indptr.to(DEVICE), indices.to(DEVICE)
            ours = flashinfer_triton.BlockSparseAttentionWrapper(ws)
            ours.plan(indptr, indices, seq_len, seq_len, R, C, HQ, HKV, D, causal=causal, q_data_type=DTYPE,
                      o_data_type=DTYPE)
            out = torch.empty_like(q)
            run = lambda w=ours, o=out: w.run(q, k, v, out=o)  # noqa: E731
            run()
            if density == 1.0:
                err = (out.float() - dense_out.float()).abs().max().item()
                if err > 2e-2:
                    print(f"    WARNING dense bsr64 and dense prefill differ by {err:.3g}")
            us, how = measure(run, args.reps)
            record("flashinfer_triton", seq_len, pattern, density, us, how, visible)

            def make_bsr(backend, indptr=indptr, indices=indices, R=R, C=C, causal=causal):
                w = fi.BlockSparseAttentionWrapper(fi_ws, backend=backend)
                w.plan(indptr, indices, seq_len, seq_len, R, C, HQ, HKV, D, causal=causal, q_data_type=DTYPE,
                       kv_data_type=DTYPE, o_data_type=DTYPE)
                o = torch.empty_like(q)
                return (lambda: w.run(q, k, v, out=o)), o

            flashinfer_rows(seq_len, pattern, density, visible, out, make_bsr)
            del ours, out
            torch.cuda.empty_cache()

        mask, row_sz, col_sz, visible = variable_pattern(seq_len, gen)
        density = visible / seq_len ** 2
        mask, row_sz, col_sz = mask.to(DEVICE), row_sz.to(DEVICE), col_sz.to(DEVICE)
        qh, kh, vh = (t.transpose(0, 1).contiguous() for t in (q, k, v))
        ours = flashinfer_triton.VariableBlockSparseAttentionWrapper(ws)
        ours.plan(mask, row_sz, col_sz, HQ, HKV, D, q_data_type=DTYPE)
        out = torch.empty_like(qh)
        run = lambda: ours.run(qh, kh, vh, out=out)  # noqa: E731
        run()
        us, how = measure(run, args.reps)
        record("flashinfer_triton", seq_len, "variable", density, us, how, visible)

        def make_variable(backend):
            w = fi.VariableBlockSparseAttentionWrapper(fi_ws, backend=backend)
            w.plan(mask, row_sz, col_sz, HQ, HKV, D, q_data_type=DTYPE, kv_data_type=DTYPE)
            holder = {}

            def fn():  # FlashInfer returns a new (rearranged) tensor each call
                holder["o"] = w.run(qh, kh, vh)

            fn()
            return fn, holder["o"]

        flashinfer_rows(seq_len, "variable", density, visible, out, make_variable)
        del q, k, v, qh, kh, vh, out, dense_out, ours
        torch.cuda.empty_cache()

    summary = summarize(rows, args.seq_lens)
    env = environment()
    head = (f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}; "
            f"{HQ}/{HKV} heads, D {D}, bf16; kernel time under CUDA-graph replay, L2 flushed")
    table = markdown_table(["seq", "pattern", "density", "system", "us", "TFLOP/s eff.", "us / (density x dense)"],
                           [[r["seq_len"], r["pattern"], round(r["density"], 4), r["system"], r["us"],
                             r["tflops_effective"], r.get("vs_density_dense", float("nan"))] for r in rows])
    print(table)
    print(head)
    print("\n".join(summary))
    cmd = "PYTHONPATH=. python3 benchmarks/bench_sparse.py " + " ".join(sys.argv[1:])
    write_results("sparse", rows, cmd, extra={"summary": [head] + summary})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "sparse.md"), "w") as f:
            f.write(table + "\n\n" + head + "\n\n" + "\n".join(summary) + "\n")
    if args.plot:
        plot(rows, args.seq_lens, os.path.join(out_dir or RESULTS_DIR, "sparse.png"))
    print(f"total {time.time() - t_start:.0f} s")


def summarize(rows, seq_lens):
    """Per sequence length: our bsr64 time as overhead + slope * density (least squares over
    densities >= 10 %), and every row's time over density x our dense time (added to the rows)."""
    lines = []
    for seq_len in seq_lens:
        dense = [r["us"] for r in rows if r["seq_len"] == seq_len and r["system"] == "flashinfer_triton_dense"]
        if not dense:
            continue
        dense_us = dense[0]
        for r in rows:
            if r["seq_len"] == seq_len and r["pattern"] != "dense":
                r["vs_density_dense"] = r["us"] / (r["density"] * dense_us)
        pts = [(r["density"], r["us"]) for r in rows if r["seq_len"] == seq_len and r["system"] == "flashinfer_triton"
               and r["pattern"] == "bsr64" and r["density"] >= 0.1 - 1e-9]
        if len(pts) >= 2:
            n = len(pts)
            mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
            slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
            lines.append(f"seq {seq_len}: ours bsr64 ~ {my - slope * mx:.0f} us + {slope:.0f} us x density "
                         f"(dense prefill {dense_us:.0f} us; slope / dense = {slope / dense_us:.3f})")
        for backend in BACKENDS:
            ratios = []
            for r in rows:
                if r["seq_len"] == seq_len and r["system"] == f"flashinfer_{backend}":
                    ours = [o["us"] for o in rows if o["seq_len"] == seq_len and o["system"] == "flashinfer_triton"
                            and o["pattern"] == r["pattern"] and abs(o["density"] - r["density"]) < 1e-9]
                    if ours:
                        ratios.append(f"{r['pattern']}@{r['density']:.3f}: {r['us'] / ours[0]:.2f}")
            if ratios:
                lines.append(f"seq {seq_len}: flashinfer_{backend} / ours (> 1: ours faster): " + ", ".join(ratios))
    return lines


def plot(rows, seq_lens, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, axes = plt.subplots(1, len(seq_lens), figsize=(6 * len(seq_lens), 4.5), squeeze=False)
    markers = {"vertical-slash": "^", "variable": "s"}
    for ax, seq_len in zip(axes[0], seq_lens):
        dense = [r["us"] for r in rows if r["seq_len"] == seq_len and r["system"] == "flashinfer_triton_dense"]
        for system in ("flashinfer_triton", "flashinfer_fa2", "flashinfer_fa3"):
            pts = sorted((r["density"], r["us"]) for r in rows if r["seq_len"] == seq_len and r["system"] == system
                         and r["pattern"] == "bsr64")
            if pts:
                line, = ax.plot([p[0] for p in pts], [p[1] / 1e3 for p in pts], "o-", label=f"{system} bsr64")
                for pattern, marker in markers.items():
                    extra = [(r["density"], r["us"]) for r in rows if r["seq_len"] == seq_len
                             and r["system"] == system and r["pattern"] == pattern]
                    if extra:
                        ax.plot([e[0] for e in extra], [e[1] / 1e3 for e in extra], marker, color=line.get_color(),
                                label=f"{system} {pattern}")
        if dense:
            ax.plot([0, 1], [0, dense[0] / 1e3], "k--", label="density x our dense prefill")
        ax.set_title(f"seq {seq_len}, {HQ}/{HKV} heads, D {D}, bf16")
        ax.set_xlabel("density (visible fraction of the attention matrix)")
        ax.set_ylabel("kernel time (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
