"""Every sampling operator, filter and ``top_k`` side by side with FlashInfer (same process).

    PYTHONPATH=. python3 benchmarks/bench_sampling.py [--budget-s 220] [--quick]

Grid: batch {1, 16, 64, 256, 512} x vocab 128256 for every op, then the same batches at vocab
151936 and 256000 while the time budget lasts (rows are ordered so the 128256 grid comes first).
float32 probabilities and float32 logits (randn * 3, what an engine hands a sampler); FlashInfer
converts bf16 logits to float32 itself. Kernel time comes from CUDA-graph replay with the L2
flushed before each replay (harness.time_graph); our generator path includes its torch.rand
launch. Bytes are the least an op must move: samplers read the input once, filters read it and
write it once. Before timing, the filters and top_k are compared with FlashInfer's output (exact
kept sets). Our rows also record which resolve path their rows took (kept set collected whole /
bracket / exact fallback over the row: see kernels/sampling.py). Rows go to
benchmarks/results/sampling.json; the markdown table (with the geometric mean speedup per op and
the worst row) is printed and, when $OUT is set, written to $OUT/sampling.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from harness import (  # noqa: E402
    geomean, markdown_table, time_eager, time_graph,
    try_import_flashinfer, write_partial_on_sigterm, write_results,
)

from flashinfer_triton import sampling as S  # noqa: E402
from flashinfer_triton.kernels import sampling as K  # noqa: E402

BATCHES = (1, 16, 64, 256, 512)
VOCABS = (128256, 151936, 256000)


def ops(fi):
    """name -> (kind, ours(inputs), theirs(inputs) or None); kind: which input and byte count."""
    F = fi.sampling if fi is not None else None

    def peer(fn):
        return fn if F is not None else None

    table = {
        "softmax": ("logits_rw", lambda d: S.softmax(d["logits"]), peer(lambda d: F.softmax(d["logits"]))),
        "sampling_from_probs": ("probs", lambda d: S.sampling_from_probs(d["probs"]),
                                peer(lambda d: F.sampling_from_probs(d["probs"]))),
        "sampling_from_logits": ("logits", lambda d: S.sampling_from_logits(d["logits"]),
                                 peer(lambda d: F.sampling_from_logits(d["logits"]))),
        "min_p_sampling(p=0.1)": ("probs", lambda d: S.min_p_sampling_from_probs(d["probs"], 0.1),
                                  peer(lambda d: F.min_p_sampling_from_probs(d["probs"], 0.1))),
        "top_k_top_p_sampling(50,0.9)": (
            "probs", lambda d: S.top_k_top_p_sampling_from_probs(d["probs"], 50, 0.9),
            peer(lambda d: F.top_k_top_p_sampling_from_probs(d["probs"], 50, 0.9))),
        "top_k_top_p_sampling(50,0.9,joint)": (
            "probs", lambda d: S.top_k_top_p_sampling_from_probs(d["probs"], 50, 0.9, filter_apply_order="joint"),
            peer(lambda d: F.top_k_top_p_sampling_from_probs(d["probs"], 50, 0.9, filter_apply_order="joint"))),
        "top_k_top_p_from_logits(50,0.9)": (
            "logits", lambda d: S.top_k_top_p_sampling_from_logits(d["logits"], 50, 0.9),
            peer(lambda d: F.top_k_top_p_sampling_from_logits(d["logits"], 50, 0.9))),
        "top_k_top_p_from_logits(50,0.9,joint)": (
            "logits", lambda d: S.top_k_top_p_sampling_from_logits(d["logits"], 50, 0.9, filter_apply_order="joint"),
            peer(lambda d: F.top_k_top_p_sampling_from_logits(d["logits"], 50, 0.9, filter_apply_order="joint"))),
        "top_k_renorm_probs(k=100)": ("probs_rw", lambda d: S.top_k_renorm_probs(d["probs"], 100),
                                      peer(lambda d: F.top_k_renorm_probs(d["probs"], 100))),
        "top_p_renorm_probs(p=0.9)": ("probs_rw", lambda d: S.top_p_renorm_probs(d["probs"], 0.9),
                                      peer(lambda d: F.top_p_renorm_probs(d["probs"], 0.9))),
        "top_k_mask_logits(k=100)": ("logits_rw", lambda d: S.top_k_mask_logits(d["logits"], 100),
                                     peer(lambda d: F.top_k_mask_logits(d["logits"], 100))),
        "top_k(k=256)": ("logits", lambda d: S.top_k(d["logits"], 256),
                         (lambda d: fi.top_k(d["logits"], 256)) if fi is not None and hasattr(fi, "top_k") else None),
    }
    for k in (10, 100, 1000):
        table[f"top_k_sampling(k={k})"] = ("probs", lambda d, k=k: S.top_k_sampling_from_probs(d["probs"], k),
                                          peer(lambda d, k=k: F.top_k_sampling_from_probs(d["probs"], k)))
    for p in (0.5, 0.9):
        table[f"top_p_sampling(p={p})"] = ("probs", lambda d, p=p: S.top_p_sampling_from_probs(d["probs"], p),
                                          peer(lambda d, p=p: F.top_p_sampling_from_probs(d["probs"], p)))
    return table


def path_mix(name, data):
    """Our resolve path per row as fractions 'candidates/bracket/fallback/stored' (None for ops without
    one), through the launchers' with_paths hook."""
    probs, logits = data["probs"], data["logits"]
    u = torch.rand((probs.shape[0], 1), device=probs.device)

    def sample(x, k, p, is_logits, joint=False, min_p=0.0):
        return S._launch_sample(x, None, None, k, None, p, None, min_p, int(k > 0), int(p < 1), int(min_p > 0), joint,
                                is_logits, u, None, 0, None, 0, with_paths=True)[2]

    def filt(x, k, p, op):
        return S._launch_filter(x, None, k, None, p, int(k > 0), int(p < 1), op, with_paths=True)[1]

    calls = {
        "min_p_sampling(p=0.1)": lambda: sample(probs, 0, 1.0, False, min_p=0.1),
        "top_k_top_p_sampling(50,0.9)": lambda: sample(probs, 50, 0.9, False),
        "top_k_top_p_sampling(50,0.9,joint)": lambda: sample(probs, 50, 0.9, False, joint=True),
        "top_k_top_p_from_logits(50,0.9)": lambda: sample(logits, 50, 0.9, True),
        "top_k_top_p_from_logits(50,0.9,joint)": lambda: sample(logits, 50, 0.9, True, joint=True),
        "top_k_renorm_probs(k=100)": lambda: filt(probs, 100, 1.0, K.OP_RENORM),
        "top_p_renorm_probs(p=0.9)": lambda: filt(probs, 0, 0.9, K.OP_RENORM),
        "top_k_mask_logits(k=100)": lambda: filt(logits, 100, 1.0, K.OP_MASK),
        "top_k(k=256)": lambda: S._launch_top_k(logits, 256, False, with_paths=True)[2],
    }
    for k in (10, 100, 1000):
        calls[f"top_k_sampling(k={k})"] = lambda k=k: sample(probs, k, 1.0, False)
    for p in (0.5, 0.9):
        calls[f"top_p_sampling(p={p})"] = lambda p=p: sample(probs, 0, p, False)
    if name not in calls:
        return None
    paths = calls[name]()
    return "/".join(f"{(paths == c).float().mean().item():.2f}" for c in (K.PATH_CANDIDATES, K.PATH_BRACKET,
                                                                           K.PATH_FALLBACK, K.PATH_STORED))


def nbytes(kind, batch, vocab):
    rw = 2 if kind.endswith("_rw") else 1
    return rw * batch * vocab * 4


def check_against_peer(fi, table, data):
    """Exact kept sets of the filters and top_k against FlashInfer on one shape (prints, never raises)."""
    for name in ("top_k_renorm_probs(k=100)", "top_p_renorm_probs(p=0.9)", "top_k_mask_logits(k=100)", "top_k(k=256)"):
        if name not in table:  # left out by --only
            continue
        _, ours, theirs = table[name]
        if theirs is None:
            continue
        try:
            a, b = ours(data), theirs(data)
            if name.startswith("top_k("):
                same = torch.equal(torch.sort(a[0].float(), -1).values, torch.sort(b[0].float(), -1).values)
            elif "mask" in name:
                same = torch.equal(torch.isinf(a), torch.isinf(b))
            else:
                same = torch.equal(a > 0, b > 0) and torch.allclose(a, b, atol=1e-6, rtol=1e-4)
            print(f"  check {name:28s} {'same as FlashInfer' if same else 'DIFFERS from FlashInfer'}")
        except Exception as exc:  # noqa: BLE001
            print(f"  check {name}: {type(exc).__name__}: {str(exc)[:160]}")


def measure(fn, reps):
    """(microseconds, how): graph replay, or eager events when capture fails."""
    try:
        return time_graph(fn, reps=reps), "graph"
    except Exception as exc:  # noqa: BLE001
        print(f"    [graph capture failed: {type(exc).__name__}: {str(exc)[:120]}; timing eagerly]")
        torch.cuda.synchronize()
        return time_eager(fn, reps=reps), "eager"


def report(rows):
    ours = {(r["op"], r["batch"], r["vocab"]): r for r in rows if r["system"] == "flashinfer_triton"}
    peer = {(r["op"], r["batch"], r["vocab"]): r for r in rows if r["system"] == "flashinfer"}
    table, per_op = [], {}
    for key, o in ours.items():
        p = peer.get(key)
        sp = p["us"] / o["us"] if p else None
        if sp:
            o["speedup_vs_flashinfer"] = sp
            per_op.setdefault(key[0], []).append((sp, key[1], key[2]))
        table.append([key[0], key[1], key[2], o["us"], o["tbps"], p["us"] if p else "-", f"{sp:.2f}x" if sp else "-",
                      o.get("paths") or "-"])
    text = markdown_table(["op", "batch", "vocab", "ours us", "ours TB/s", "flashinfer us", "speedup",
                           "our rows: candidates/bracket/fallback/stored"], table)
    if per_op:
        summary = []
        for op, v in per_op.items():
            main = [s for s, _, vocab in v if vocab == VOCABS[0]]
            worst = min(v)
            summary.append([op, f"{geomean(main):.2f}x" if main else "-", len(main), f"{worst[0]:.2f}x",
                            f"{worst[1]}x{worst[2]}"])
        text += "\n\n" + markdown_table(["op", f"geomean vs FlashInfer (vocab {VOCABS[0]})", "rows", "worst row",
                                         "worst at batch x vocab"], summary)
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-s", type=float, default=220.0,
                        help="stop starting new shapes after this many seconds (JIT included)")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 512 only, fewer repetitions")
    parser.add_argument("--only", default="", help="comma-separated op names (default: all)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_sampling needs a GPU")
        return
    t0 = time.time()
    fi = try_import_flashinfer()
    table = ops(fi)
    if args.only:
        table = {k: v for k, v in table.items() if k in set(args.only.split(","))}
    reps = 20 if args.quick else 50
    batches = (1, 512) if args.quick else BATCHES
    rows = []
    write_partial_on_sigterm("sampling", rows, "benchmarks/bench_sampling.py")
    gen = torch.Generator(device="cuda").manual_seed(0)
    stopped = None
    for vocab in VOCABS:
        for batch in batches:
            if time.time() - t0 > args.budget_s:
                stopped = (batch, vocab)
                break
            logits = torch.randn(batch, vocab, device="cuda", generator=gen) * 3
            data = {"logits": logits, "probs": torch.softmax(logits, -1)}
            if vocab == VOCABS[0] and batch == 16:
                check_against_peer(fi, table, data)
            for name, (kind, ours, theirs) in table.items():
                for system, fn in (("flashinfer_triton", ours), ("flashinfer", theirs)):
                    if fn is None:
                        continue
                    try:
                        fn(data)  # first call: JIT compile outside the timed region
                        torch.cuda.synchronize()
                        us, how = measure(lambda: fn(data), reps)
                    except Exception as exc:  # noqa: BLE001 - a failing peer skips its row only
                        print(f"  skip {system} {name} {batch}x{vocab}: {type(exc).__name__}: {str(exc)[:200]}")
                        if system == "flashinfer_triton":
                            traceback.print_exc()
                        torch.cuda.synchronize()
                        continue
                    b = nbytes(kind, batch, vocab)
                    rows.append(dict(system=system, op=name, batch=batch, vocab=vocab, us=us,
                                     tbps=b / (us * 1e-6) / 1e12, bytes=b, timing=how))
                    if system == "flashinfer_triton":
                        rows[-1]["paths"] = path_mix(name, data)
                    print(f"  {system:18s} {name:38s} {batch:4d}x{vocab:<6d} {us:9.2f} us ({how})", flush=True)
            del logits, data
            torch.cuda.empty_cache()
        if stopped:
            break
    if stopped:
        print(f"[budget] {args.budget_s:.0f} s reached: stopped before batch {stopped[0]} x vocab {stopped[1]}")
    text = report(rows)
    command = "PYTHONPATH=. python3 benchmarks/bench_sampling.py" + (" --quick" if args.quick else "") + \
        f" --budget-s {args.budget_s:g}" + (f" --only {args.only}" if args.only else "")
    path = write_results("sampling", rows, command, extra={"wall_s": time.time() - t0, "stopped_before": stopped})
    print(text)
    print(f"\nwrote {path} ({time.time() - t0:.0f} s)")
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "sampling.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
