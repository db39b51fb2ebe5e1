"""Attention variants on the GPU: a built-in written as a user variant beside the built-in, the
examples' variants beside PyTorch's FlexAttention (compiled) on the same problems, and attention
sinks beside FlashInfer's sink wrapper.

Causal prefill, 32 query / 8 KV heads, head_dim 128, bfloat16, batch x length 1x8192 and 8x2048
(ragged K/V for ours, dense [B, H, S, D] for FlexAttention):

- ``soft_cap``: ``logits_soft_cap=30`` built in vs the same as a ``logits_transform`` variant
  (target: the variant within 3 % of the built-in).
- ``t5_bias``: T5 relative-position bias from a per-head table (examples/attention_variants.py)
  vs FlexAttention's ``score_mod`` with a causal block mask.
- ``document_mask``: causal attention inside packed documents of random lengths (8 per 8192
  tokens), our mask + key-range variant vs FlexAttention's ``mask_mod`` block mask.
- ``sliding_window``: 1024-key causal window, our built-in ``window_left`` vs FlexAttention.
- ``sinks``: gpt-oss sinks, full causal and a 128-key window, ``BatchAttentionWithAttentionSinkWrapper``
  (paged, page 16) beside FlashInfer's wrapper of the same name when it is installed.

Kernel time under CUDA-graph replay with the L2 flushed (``harness.time_graph``; eager events where
a graph cannot be captured); TFLOP/s count the visible (query, key) pairs only:
``flops = 4 * H_qo * D * pairs``. FlexAttention and FlashInfer compile on first use: cases not
started once ``--budget-s`` seconds have passed are skipped, so the run stays near three minutes.

    PYTHONPATH=. python3 benchmarks/bench_variants.py [--reps 20] [--budget-s 150] [--cases t5_bias,...]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import triton
import triton.language as tl  # noqa: F401  (Triton wants it visible beside a @triton.jit function)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import (  # noqa: E402
    environment, markdown_table, time_eager, time_graph, try_import_flashinfer,
    write_partial_on_sigterm, write_results,
)
import flashinfer_triton  # noqa: E402
from examples import attention_variants as ex  # noqa: E402
from flashinfer_triton.kernels.attention.elementwise import tanh  # noqa: E402

HQ, HKV, D, PAGE = 32, 8, 128, 16
DTYPE = torch.bfloat16
SHAPES = ((1, 8192), (8, 2048))
SOFT_CAP, WINDOW = 30.0, 1024
CASES = ("soft_cap", "t5_bias", "document_mask", "sliding_window", "sinks")


@triton.jit
def soft_cap_logits(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
    """The built-in soft cap as a user variant, ``cap * tanh(logits / cap)``, with the same tanh
    the built-in uses (so the rows compare the variant machinery, not two tanh formulas)."""
    cap = params[4]
    return cap * tanh(logits * (1.0 / cap))


SOFT_CAP_VARIANT = flashinfer_triton.AttentionVariant(logits_transform=soft_cap_logits, scalars=("cap",),
                                                      name="soft_cap")


def indptr(lens, device="cuda"):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


def timed(fn, reps):
    """(us, how): graph replay, or eager events when the call cannot be captured."""
    try:
        return time_graph(fn, reps=reps), "graph"
    except Exception as exc:  # noqa: BLE001
        print(f"    (graph capture failed: {type(exc).__name__}: {str(exc)[:120]}; timing eagerly)")
        torch.cuda.synchronize()
        return time_eager(fn, reps=reps), "eager"


class Problem:
    """One batch x length: ragged q/k/v (ours) and their dense [B, H, S, D] copies (FlexAttention)."""

    def __init__(self, b, n, gen, device="cuda", dtype=DTYPE):
        self.b, self.n = b, n
        self.q = torch.randn(b * n, HQ, D, generator=gen).to(dtype).to(device)
        self.k = torch.randn(b * n, HKV, D, generator=gen).to(dtype).to(device)
        self.v = torch.randn(b * n, HKV, D, generator=gen).to(dtype).to(device)
        self.indptr = indptr([n] * b, device)
        self.dense = [x.view(b, n, x.shape[1], D).transpose(1, 2).contiguous() for x in (self.q, self.k, self.v)]
        self.ws = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        self.out = torch.empty_like(self.q)

    def ours(self, variant=None, **plan):
        w = flashinfer_triton.BatchPrefillWithRaggedKVCacheWrapper(self.ws, variant=variant)
        w.plan(self.indptr, self.indptr, HQ, HKV, D, causal=True, q_data_type=self.q.dtype, **plan)
        return w

    def from_dense(self, o):
        return o.transpose(1, 2).reshape(self.b * self.n, HQ, D)


# FlexAttention's forms of the same problems.
def causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def t5_score_mod(bias):
    """``bias`` [H, 257]: the T5 table of examples/attention_variants.py."""
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + bias[h, torch.clamp(kv_idx - q_idx, -128, 128) + 128]
    return score_mod


def document_mask_mod(docs):
    """``docs`` [B, S]: each token's document (its first position)."""
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (docs[b, q_idx] == docs[b, kv_idx])
    return mask_mod


def window_mask_mod(window):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)
    return mask_mod


_FLEX = []


def flex_runner(p, score_mod=None, mask_mod=None, compiled=True):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if compiled and not _FLEX:
        _FLEX.append(torch.compile(flex_attention, dynamic=False))
    flex = _FLEX[0] if compiled else flex_attention
    block_mask = create_block_mask(mask_mod, p.b, None, p.n, p.n, device=p.q.device.type)
    q, k, v = p.dense
    return lambda: flex(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)


def check(name, got, ref, tol=3e-2):
    err = (got.float() - ref.float()).abs().max().item()
    if not err <= tol:
        print(f"    WARNING {name}: differs from flashinfer_triton by {err:.3g}")
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="skip compiling peers (FlexAttention, FlashInfer) for cases after this many seconds")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("No GPU found: the variants benchmark needs one.")
        return
    t0 = time.time()
    cases = args.cases.split(",")
    fi = try_import_flashinfer() if "sinks" in cases else None
    gen = torch.Generator().manual_seed(0)
    rows, table = [], []
    write_partial_on_sigterm("variants", rows, "benchmarks/bench_variants.py")

    def record(case, p, system, us, how, pairs, note=""):
        tflops = 4 * HQ * D * pairs / (us * 1e-6) / 1e12
        rows.append(dict(case=case, batch=p.b, seq_len=p.n, system=system, us=us, tflops=tflops, timing=how,
                         note=note))
        print(f"  {case:15s} {p.b}x{p.n:<5d} {system:22s} {us:9.1f} us {tflops:6.0f} TFLOP/s ({how}) {note} "
              f"[{time.time() - t0:.0f} s]", flush=True)
        return us

    for b, n in SHAPES:
        p = Problem(b, n, gen)
        causal_pairs = b * n * (n + 1) // 2
        shape = f"{b}x{n}"

        if "soft_cap" in cases:
            w = p.ours(logits_soft_cap=SOFT_CAP)
            ref = w.run(p.q, p.k, p.v).clone()
            us_b, how = timed(lambda: w.run(p.q, p.k, p.v, out=p.out), args.reps)
            record("soft_cap", p, "built-in", us_b, how, causal_pairs)
            wv = p.ours(variant=SOFT_CAP_VARIANT)
            err = check("soft-cap variant", wv.run(p.q, p.k, p.v, SOFT_CAP), ref)
            us_v, how = timed(lambda: wv.run(p.q, p.k, p.v, SOFT_CAP, out=p.out), args.reps)
            record("soft_cap", p, "variant", us_v, how, causal_pairs, f"variant/built-in {us_v / us_b:.3f}")
            table.append(["soft_cap (as a variant)", shape, us_v, "built-in", us_b, us_b / us_v, err])

        if "t5_bias" in cases:
            weights = torch.randn(32, HQ, generator=gen).cuda()
            bias = ex.t5_bias_table(weights)
            w = p.ours(variant=ex.T5_BIAS)
            ours = w.run(p.q, p.k, p.v, bias).clone()
            us_o, how = timed(lambda: w.run(p.q, p.k, p.v, bias, out=p.out), args.reps)
            record("t5_bias", p, "flashinfer_triton", us_o, how, causal_pairs)
            us_f, err = float("nan"), float("nan")
            if time.time() - t0 < args.budget_s:
                flex = flex_runner(p, t5_score_mod(bias), causal_mask)
                err = check("flex t5", p.from_dense(flex()), ours)
                us_f, how = timed(flex, args.reps)
                record("t5_bias", p, "flex_attention", us_f, how, causal_pairs)
            table.append(["t5_bias", shape, us_o, "flex_attention", us_f, us_f / us_o, err])

        if "document_mask" in cases:
            doc_lens = [ex.random_split(n, max(1, n // 1024), gen) for _ in range(b)]
            bounds = ex.document_bounds_table(doc_lens).cuda()
            docs = bounds[:, 0].view(b, n).contiguous()
            pairs = sum(m * (m + 1) // 2 for lens in doc_lens for m in lens)
            w = p.ours(variant=ex.DOCUMENT_MASK)
            ours = w.run(p.q, p.k, p.v, bounds, p.indptr).clone()
            us_o, how = timed(lambda: w.run(p.q, p.k, p.v, bounds, p.indptr, out=p.out), args.reps)
            record("document_mask", p, "flashinfer_triton", us_o, how, pairs)
            us_f, err = float("nan"), float("nan")
            if time.time() - t0 < args.budget_s:
                flex = flex_runner(p, None, document_mask_mod(docs))
                err = check("flex document mask", p.from_dense(flex()), ours)
                us_f, how = timed(flex, args.reps)
                record("document_mask", p, "flex_attention", us_f, how, pairs)
            table.append(["document_mask", shape, us_o, "flex_attention", us_f, us_f / us_o, err])

        if "sliding_window" in cases:
            pairs = b * sum(min(i + 1, WINDOW) for i in range(n))
            w = p.ours(window_left=WINDOW - 1)
            ours = w.run(p.q, p.k, p.v).clone()
            us_o, how = timed(lambda: w.run(p.q, p.k, p.v, out=p.out), args.reps)
            record("sliding_window", p, "flashinfer_triton", us_o, how, pairs)
            us_f, err = float("nan"), float("nan")
            if time.time() - t0 < args.budget_s:
                flex = flex_runner(p, None, window_mask_mod(WINDOW))
                err = check("flex sliding window", p.from_dense(flex()), ours)
                us_f, how = timed(flex, args.reps)
                record("sliding_window", p, "flex_attention", us_f, how, pairs)
            table.append(["sliding_window", shape, us_o, "flex_attention", us_f, us_f / us_o, err])

        if "sinks" in cases:
            pages = -(-n // PAGE)
            cache = torch.randn(b * pages, 2, PAGE, HKV, D, generator=gen).to(DTYPE).cuda()
            ids = torch.randperm(b * pages, generator=gen).to(torch.int32).cuda()
            kv_indptr = indptr([pages] * b)
            last = torch.full((b,), n - (pages - 1) * PAGE, dtype=torch.int32, device="cuda")
            sinks = (torch.rand(HQ, generator=gen) * 5).cuda()
            sm_scale = 1.0 / math.sqrt(D)
            for window in (-1, 128):
                pairs = causal_pairs if window < 0 else b * sum(min(i + 1, window + 1) for i in range(n))
                label = "sinks" if window < 0 else "sinks_window128"

                def make(mod):
                    w = mod.BatchAttentionWithAttentionSinkWrapper(p.ws, "NHD", q_data_type=DTYPE, kv_data_type=DTYPE,
                                                                   head_dim_qk=D, head_dim_vo=D, window_left=window)
                    w.plan(p.indptr, kv_indptr, ids, last, HQ, HKV, D, PAGE, causal=True, window_left=window,
                           q_data_type=DTYPE, kv_data_type=DTYPE)
                    return w

                w = make(flashinfer_triton)
                ours = w.run(p.q, cache, sinks, sm_scale).clone()
                us_o, how = timed(lambda: w.run(p.q, cache, sinks, sm_scale, out=p.out), args.reps)
                record(label, p, "flashinfer_triton", us_o, how, pairs)
                us_f, err = float("nan"), float("nan")
                if fi is not None and time.time() - t0 < args.budget_s:
                    try:
                        wf = make(fi)
                        o_fi = torch.empty_like(p.out)
                        err = check("flashinfer sinks", wf.run(p.q, cache, sinks, sm_scale), ours)
                        us_f, how = timed(lambda: wf.run(p.q, cache, sinks, sm_scale, out=o_fi), args.reps)
                        record(label, p, "flashinfer", us_f, how, pairs)
                    except Exception as exc:  # noqa: BLE001
                        print(f"    FlashInfer's sink wrapper failed: {type(exc).__name__}: {exc}")
                table.append([label, shape, us_o, "flashinfer", us_f, us_f / us_o, err])
        del p
        torch.cuda.empty_cache()

    header = ["case", "shape", "ours us", "peer", "peer us", "peer / ours", "max |diff|"]
    md = markdown_table(header, table)
    env = environment()
    summary = (f"GPU {env['gpu']}, torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}; "
               f"32/8 heads, D 128, bf16, causal; peer / ours > 1 means flashinfer_triton (for soft_cap: the user "
               f"variant) is faster; targets: soft_cap >= 0.97, every other row >= 1")
    print(md)
    print(summary)
    cmd = "PYTHONPATH=. python3 benchmarks/bench_variants.py " + " ".join(sys.argv[1:])
    write_results("variants", rows, cmd, extra={"summary": summary})
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "variants.md"), "w") as f:
            f.write(md + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
