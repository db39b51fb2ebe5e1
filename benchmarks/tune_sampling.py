"""Sweep the sampling kernels' shape choices (kernels/sampling.py: SamplingConfig fields of the
LARGE entry and the programs per row) on the benchmark shapes, to pick the table entries.

    PYTHONPATH=. python3 benchmarks/tune_sampling.py [--budget-s 540] [--axes split,block,...]

One axis at a time around the current LARGE entry (every value of an axis, the others at their
defaults); the programs per row (``split``) are swept for every config because they are a
runtime choice. Each point runs through the launchers' ``config=`` / ``split=`` hooks (no
monkeypatching) and is checked against the default configuration first (filters and top_k must
agree exactly; samplers must return the same samples for the same uniforms), so a broken point
fails the sweep instead of winning it; only Triton's out-of-resources errors are recorded and
skipped. Results (GPU, versions and date on every row and run) are appended to
benchmarks/results/tune/sampling-<gpu>.json (copied to $OUT when set), so a sweep can run as
several commands (one per group of axes); the best point per (op, batch) and each config's
geometric-mean speedup over the default, over all rows so far, are printed and stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import RESULTS_DIR, environment, geomean, time_graph  # noqa: E402
from flashinfer_triton import sampling as S  # noqa: E402
from flashinfer_triton.kernels import sampling as K  # noqa: E402

VOCAB = 128256
DEVICE = "cuda"
BATCHES = (1, 16, 64, 256, 512)
SPLITS = (1, 2, 4, 8, 16)
AXES = {
    "block": (1024, 2048, 4096),
    "warps": (4, 8, 16),
    "resolve_warps": (4, 8, 16),
    "cap": (2048, 4096),
    "pivots": (4, 8, 16),
    "sample": (2048, 4096, 8192),
    "bins": (128, 256, 512),
    "stages": (1, 2, 3),
    "direct_block": (2048, 4096, 8192, 16384),
}


def operations(probs, logits):
    """name -> call(config, split): the benchmark's core ops through the launchers' hooks."""
    f32 = torch.float32

    def u(b):
        g = torch.Generator(probs.device).manual_seed(1)
        return torch.rand((b, 1), device=probs.device, dtype=f32, generator=g)

    b = probs.shape[0]
    uu = u(b)

    def sampler(x, k, p, is_logits, mode_k, mode_p, joint=False):
        return lambda cfg, split: S._launch_sample(x, None, None, k, None, p, None, 0.0, mode_k, mode_p, 0, joint,
                                                   is_logits, uu, None, 0, None, 0, config=cfg, split=split)[0]

    return {
        "sampling_from_probs": sampler(probs, 0, 1.0, False, 0, 0),  # split 1: the direct kernel
        "top_k_sampling(k=100)": sampler(probs, 100, 1.0, False, 1, 0),
        "top_p_sampling(p=0.9)": sampler(probs, 0, 0.9, False, 0, 1),
        "top_k_top_p_from_logits(50,0.9)": sampler(logits, 50, 0.9, True, 1, 1),
        "sampling_from_logits": sampler(logits, 0, 1.0, True, 0, 0),
        "top_k_renorm_probs(k=100)": lambda cfg, split: S._launch_filter(probs, None, 100, None, 1.0, 1, 0, K.OP_RENORM,
                                                                        config=cfg, split=split),
        "top_p_renorm_probs(p=0.9)": lambda cfg, split: S._launch_filter(probs, None, 0, None, 0.9, 0, 1, K.OP_RENORM,
                                                                        config=cfg, split=split),
        "top_k_mask_logits(k=100)": lambda cfg, split: S._launch_filter(logits, None, 100, None, 1.0, 1, 0, K.OP_MASK,
                                                                       config=cfg, split=split),
        "top_k(k=256)": lambda cfg, split: S._launch_top_k(logits, 256, False, config=cfg, split=split),
    }


def same(a, b, probs64=None):
    """Filters and top_k: exact kept sets and indices, values to rounding. Samples: a draw may
    move to a neighbouring token where its uniform sits within rounding of a CDF step (sums in
    another order), so at least 90% must agree and every disagreeing pair must be neighbours: the
    float64 mass strictly between the two tokens (counting tokens at least as likely as the less
    likely of the two, which covers a threshold filter's kept set) at most 1e-4. A broken
    configuration disagrees on most rows, or far apart."""
    if isinstance(a, tuple):
        return all(same(x, y, probs64) for x, y in zip(a, b))
    if a.dtype.is_floating_point:
        return torch.equal(torch.isinf(a), torch.isinf(b)) and torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    if a.dim() == 1:
        differ = a != b
        if differ.float().mean().item() > 0.10:
            return False
        if not bool(differ.any()) or probs64 is None:
            return differ.float().mean().item() <= 0.01
        rows = differ.nonzero().flatten()
        lo = torch.minimum(a[rows], b[rows]).long()[:, None]
        hi = torch.maximum(a[rows], b[rows]).long()[:, None]
        p = probs64[rows]
        floor = torch.minimum(p.gather(1, lo), p.gather(1, hi))
        idx = torch.arange(p.shape[1], device=p.device)[None, :]
        between = (idx > lo) & (idx < hi) & (p >= floor)
        return bool(((p * between).sum(1) <= 1e-4).all())
    return torch.equal(a, b)


def points(axes, combos=()):
    """The default, then each combination of ``combos`` ("block=1024,stages=3"), then one axis at
    a time."""
    base = K.LARGE
    yield "default", base
    for combo in combos:
        fields = {k: int(v) for k, v in (kv.split("=") for kv in combo.split(","))}
        yield combo, dataclasses.replace(base, **fields)
    for axis in axes:
        for v in AXES[axis]:
            if getattr(base, axis) != v:
                yield f"{axis}={v}", dataclasses.replace(base, **{axis: v})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting new configs after this many seconds")
    ap.add_argument("--axes", default=",".join(AXES),
                    help=f"config axes to sweep (of {','.join(AXES)}; '' sweeps only the split of the default)")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--points", nargs="*", default=[],
                    help='combinations swept before the single axes, e.g. "block=1024,stages=3"')
    args = ap.parse_args()
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("tune_sampling needs a GPU")
        return
    axes = [a for a in args.axes.split(",") if a]
    unknown = set(axes) - set(AXES)
    if unknown:
        raise SystemExit(f"unknown axes {sorted(unknown)}; choose from {sorted(AXES)}")
    env = environment()
    t0 = time.time()
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    shapes, probs64 = {}, {}
    for batch in map(int, args.batches.split(",")):
        logits = torch.randn(batch, VOCAB, device=DEVICE, generator=gen) * 3
        shapes[batch] = operations(torch.softmax(logits, -1), logits)
        probs64[batch] = torch.softmax(logits.double(), -1)
    reference = {(b, name): fn(K.LARGE, None) for b, table in shapes.items() for name, fn in table.items()}
    rows, skipped = [], []
    previous = previous_results(env)
    for label, cfg in points(axes, args.points):
        if time.time() - t0 > args.budget_s:
            skipped.append(label)
            continue
        try:
            sweep_config(label, cfg, shapes, probs64, reference, env, rows, args.reps)
        except AssertionError as exc:  # a wrong configuration is recorded as such and cannot win
            print(f"MISMATCH {exc}", flush=True)
            rows.append(dict(env, config=label, op=None, batch=None, split=None, us=None, error=str(exc)[:300]))
        save(rows, skipped, env, t0, False, previous)
    save(rows, skipped, env, t0, True, previous)


def sweep_config(label, cfg, shapes, probs64, reference, env, rows, reps):
    """Every (batch, op, split) of one configuration, checked against the default first."""
    for batch, table in shapes.items():
        for name, fn in table.items():
            for split in SPLITS:
                if split > cfg.split_max:
                    continue
                try:
                    out = fn(cfg, split)
                except Exception as exc:  # noqa: BLE001 - only resource limits are tolerated
                    if "OutOfResources" in type(exc).__name__ or "out of resource" in str(exc):
                        rows.append(dict(env, config=label, op=name, batch=batch, split=split, us=None,
                                         error=str(exc)[:200]))
                        break
                    raise
                if not same(out, reference[(batch, name)], probs64[batch]):
                    raise AssertionError(f"{label} split={split} {name} batch={batch}: output differs from the "
                                         f"default configuration")
                us = time_graph(lambda: fn(cfg, split), reps=reps)
                rows.append(dict(env, config=label, op=name, batch=batch, vocab=VOCAB, split=split, us=us,
                                 **dataclasses.asdict(cfg)))
                print(f"{label:18s} {name:32s} batch {batch:4d} split {split:2d}: {us:9.1f} us", flush=True)


def previous_results(env):
    """(path, earlier rows, earlier runs) of this GPU's sweep file: runs append to it."""
    gpu = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
    path = os.path.join(RESULTS_DIR, "tune", f"sampling-{gpu}.json")
    if not os.path.exists(path):
        return path, [], []
    with open(path) as f:
        old = json.load(f)
    return path, old["rows"], old["runs"]


def save(rows, skipped, env, t0, final, previous):
    """Write the rows so far (after every configuration: a call stopped at its limit keeps them);
    ``final`` also prints the best points and each configuration's speedup."""
    path, old_rows, old_runs = previous  # runs append (e.g. one per group of axes); every row carries its environment
    gpu = os.path.basename(path)[len("sampling-"):-len(".json")]
    command = " ".join(["PYTHONPATH=. python3 benchmarks/tune_sampling.py"] + sys.argv[1:])
    runs = old_runs + [dict(command=command, environment=env, wall_s=time.time() - t0, skipped_for_budget=skipped)]
    rows = old_rows + rows
    best = {}
    for r in rows:
        if r["us"] is not None:
            key = f"{r['op']} @ {r['batch']}"
            if key not in best or r["us"] < best[key]["us"]:
                best[key] = dict(config=r["config"], split=r["split"], us=r["us"])
    # each config against the default over every (op, batch), both at their best split
    per_config = {}
    for r in rows:
        if r["us"] is not None:
            k = (r["config"], r["op"], r["batch"])
            per_config[k] = min(per_config.get(k, float("inf")), r["us"])
    scores = {}
    default = {(op, b): us for (c, op, b), us in per_config.items() if c == "default"}
    for (c, op, b), us in per_config.items():
        if (op, b) in default:
            scores.setdefault(c, []).append(default[(op, b)] / us)
    summary = {c: geomean(v) for c, v in scores.items()}
    payload = dict(runs=runs, large_default=dataclasses.asdict(K.LARGE), programs_per_cu=K.PROGRAMS_PER_CU, rows=rows,
                   best_per_shape=best, speedup_vs_default_geomean=summary)
    for d in [os.path.dirname(path)] + ([os.path.join(os.environ["OUT"], "tune")] if os.environ.get("OUT") else []):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"sampling-{gpu}.json"), "w") as f:
            json.dump(payload, f, indent=1)
    if not final:
        return
    for key, v in best.items():
        print(f"best {key:44s} {v['config']:18s} split {v['split']:2d} {v['us']:9.1f} us")
    for c, g in sorted(summary.items(), key=lambda kv: -kv[1]):
        print(f"config {c:18s} geomean speedup vs default {g:.3f}x")
    if skipped:
        print(f"[budget] skipped {skipped}")
    print(f"wrote {path} ({len(rows)} rows, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
