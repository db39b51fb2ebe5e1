"""Serve a stream of requests end to end through flashinfer_triton's kernels (``make demo``).

A Llama-3 decoder from Hugging Face ``transformers`` (random weights from a config, or a local
checkpoint with ``--model``) runs in a continuous-batching loop (``flashinfer_triton.serving``):
paged KV cache, one plan per step for all layers, chunked prefill, decode, cascade over a cached
system prompt, sampling. First a correctness check (teacher-forced attention outputs and logits
against the HF model with SDPA), then the stream through three backends on the same requests:
flashinfer_triton, FlashInfer (when ``import flashinfer`` works) and PyTorch SDPA.

GPU: Llama-3-8B shapes (32 layers, hidden 4096, 32/8 heads of 128, SwiGLU 14336, vocab 128256) in
bfloat16; prompts of a 512-token system prompt plus 128-8192 user tokens, 256 new tokens each.
Results go to benchmarks/results/serve.json.
CPU (no GPU found): a 2-layer, hidden-64 model in float32 through the Triton interpreter.

    python examples/serve.py [--quick] [--num-requests N] [--backends flashinfer_triton,flashinfer,sdpa]
                             [--model /path/to/checkpoint] [--layers N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import flashinfer_triton  # noqa: E402
from flashinfer_triton.serving import Engine, KernelBackend, Request, SamplingParams, SdpaBackend  # noqa: E402
from flashinfer_triton.serving import check, hf  # noqa: E402
from flashinfer_triton.serving.model import DecoderWeights, ModelSpec  # noqa: E402

# FlashInfer last: a fault in the peer (e.g. a CUDA error) cannot take the other runs with it.
BACKENDS = ("flashinfer_triton", "sdpa", "flashinfer")


def workload(vocab: int, num_requests: int, system_len: int, user_min: int, user_max: int, new_tokens: int,
             max_batch: int, gap: int, seed: int = 0):
    """The system prompt and the requests: user parts log-uniform in [user_min, user_max] tokens,
    half a batch arriving at step 0, then one every ``gap`` steps."""
    rng = np.random.default_rng(seed)
    system = rng.integers(0, vocab, system_len).tolist()
    lens = np.exp(rng.uniform(np.log(user_min), np.log(user_max), num_requests)).astype(int)
    first = max_batch // 2
    return system, [Request(system + rng.integers(0, vocab, n).tolist(), new_tokens, max(0, i - first + 1) * gap)
                    for i, n in enumerate(lens)]


def copy_requests(requests):
    return [Request(r.prompt, r.max_new_tokens, r.arrival_step) for r in requests]


def make_backend(name, spec, dtype, device, page_size, cascade=True):
    if name == "sdpa":
        return SdpaBackend(spec, dtype, device, page_size)
    if name == "flashinfer":
        import flashinfer  # lazily: optional peer

        return KernelBackend(flashinfer, spec, dtype, device, page_size, cascade=cascade, name="flashinfer")
    return KernelBackend(flashinfer_triton, spec, dtype, device, page_size, cascade=cascade,
                         workspace_mb=128 if ON_GPU else 8, name="flashinfer_triton")


def available_backends(names):
    out = []
    for name in names:
        if name == "flashinfer":
            try:
                import flashinfer  # noqa: F401
            except Exception as exc:  # noqa: BLE001 - any import failure means "peer absent"
                print(f"FlashInfer not available ({type(exc).__name__}: {exc}); its run is skipped")
                continue
        out.append(name)
    return out


def run_check(config, dtype, device, names, page_size, scale, greedy) -> dict:
    print(f"\nCorrectness: {config.num_hidden_layers}-layer model of the same shapes vs Hugging Face "
          f"(attn_implementation='sdpa'), {str(dtype).replace('torch.', '')}, tolerance 2x the HF model's own "
          f"error against float64 (+1 ulp)")
    t0 = time.perf_counter()
    model = hf.build_hf_model(config, dtype, device, seed=1)
    spec = ModelSpec.from_hf_config(config)
    sc = check.scenario(config.vocab_size, page_size, scale=scale)
    makers = [(n, lambda n=n: make_backend(n, spec, dtype, device, page_size)) for n in names]
    results = check.run_checks(model, makers, sc, greedy=greedy)
    print(f"  ({time.perf_counter() - t0:.0f} s including kernel compilation)")
    del model
    return results


def serve_all(weights, names, system, requests, page_size, max_batch, max_step_tokens, num_pages, warmup, sampling,
              cascade=True):
    """Serve the same requests through each backend; return one stats dict per backend."""
    rows = []
    for name in names:
        print(f"\n[{name}]")
        try:
            backend = make_backend(name, weights.spec, weights.dtype, weights.device, page_size, cascade)
            engine = Engine(weights, backend, num_pages, page_size, max_batch, max_step_tokens, sampling)
            with torch.inference_mode():
                t0 = time.perf_counter()
                engine.cache_prefix(system)
                if warmup:
                    engine.serve(copy_requests(warmup))
                _sync()
                warm_s = time.perf_counter() - t0
                print(f"  prefix cache + warm-up (kernel compilation / JIT): {warm_s:.1f} s")
                reqs = copy_requests(requests)
                st = engine.serve(reqs, progress=True, desc=name)
            assert engine.pool.num_free + len(engine.prefix_pages) == engine.pool.num_pages, "pages leaked"
        except Exception as exc:  # noqa: BLE001 - one backend failing must not hide the others
            print(f"  {name} failed: {type(exc).__name__}: {exc}")
            continue
        finally:
            engine = backend = None
            if ON_GPU:
                torch.cuda.empty_cache()
        st.update(backend=name, warmup_s=warm_s)
        rows.append(st)
        print(f"  {st['output_tok_s']:.0f} output tok/s ({st['total_tok_s']:.0f} tok/s with prompts), TTFT mean "
              f"{st['ttft_mean_ms']:.0f} ms (p99 {st['ttft_p99_ms']:.0f}), ITL mean {st['itl_mean_ms']:.1f} ms "
              f"(p99 {st['itl_p99_ms']:.1f}), {st['steps']} steps ({st['cascade_steps']} with cascade decode), "
              f"{st['wall_s']:.1f} s")
    return rows


def _sync():
    if ON_GPU:
        torch.cuda.synchronize()


def table(rows):
    from benchmarks.harness import markdown_table

    header = ["backend", "output tok/s", "total tok/s", "TTFT mean ms", "TTFT p50 ms", "TTFT p99 ms", "ITL mean ms",
              "ITL p50 ms", "ITL p99 ms", "wall s", "steps", "cascade steps"]
    body = [[r["backend"], r["output_tok_s"], r["total_tok_s"], r["ttft_mean_ms"], r["ttft_p50_ms"], r["ttft_p99_ms"],
             r["itl_mean_ms"], r["itl_p50_ms"], r["itl_p99_ms"], r["wall_s"], r["steps"], r["cascade_steps"]]
            for r in rows]
    return markdown_table(header, body)


def gpu_demo(args, dtype=torch.bfloat16, device=torch.device("cuda"), page=16) -> int:
    from benchmarks.harness import environment

    env = environment()
    print(f"GPU {env['gpu']}: torch {env['torch']}, triton {env['triton']}, flashinfer {env['flashinfer']}")
    names = available_backends(args.backends)
    warm = None
    if "flashinfer" in names:
        # FlashInfer compiles its kernels on first use, one module after another (minutes on a fresh
        # machine): start them all now, side by side, while the check and the model set-up run.
        warm = subprocess.Popen([sys.executable, os.path.join(ROOT, "benchmarks", "warm_flashinfer.py")])
    try:
        return _gpu_demo(args, names, dtype, device, page)
    finally:
        if warm is not None:  # done by now (the FlashInfer leg needed its modules), unless it hangs
            try:
                warm.wait(timeout=60)
            except subprocess.TimeoutExpired:
                warm.kill()


def _gpu_demo(args, names, dtype, device, page) -> int:
    from benchmarks.harness import write_results

    if args.model:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(args.model, local_files_only=True)
    else:
        config = hf.llama3_8b_config(num_layers=args.layers)
    checks = {}
    if not args.no_check:
        check_config = config.__class__.from_dict(config.to_dict())
        check_config.num_hidden_layers = 2
        checks = run_check(check_config, dtype, device, names, page, scale=8, greedy=False)
    ok = checks.get("flashinfer_triton", True)

    t0 = time.perf_counter()
    model = hf.build_hf_model(args.model or config, dtype, device)
    weights = DecoderWeights.from_hf(model)
    del model  # the fused QKV / gate-up copies are what the loop reads
    if ON_GPU:
        torch.cuda.empty_cache()
    s = weights.spec
    n_params = sum(t.numel() for t in [weights.embed, weights.norm, weights.lm_head] + [
        x for lw in weights.layers for x in vars(lw).values() if x is not None])
    print(f"\nModel: {s.num_layers} layers, hidden {s.hidden}, {s.num_qo_heads}/{s.num_kv_heads} heads x {s.head_dim}, "
          f"MLP {s.intermediate}, vocab {s.vocab}, {n_params / 1e9:.2f} B parameters in "
          f"{str(dtype).replace('torch.', '')} "
          f"({'checkpoint ' + args.model if args.model else 'random weights'}; {time.perf_counter() - t0:.0f} s)")

    num = args.num_requests or (16 if args.quick else 64)
    system, requests = workload(s.vocab, num, args.system_tokens, 128, 8192, args.new_tokens, args.max_batch, args.gap)
    warm = workload(s.vocab, 6, args.system_tokens, 128, 8192, 4, args.max_batch, 1, seed=1)[1]
    page_bytes = s.num_layers * 2 * page * s.num_kv_heads * s.head_dim * weights.embed.element_size()
    need = sum(-(-(len(r.prompt) + r.max_new_tokens) // page) for r in requests) + len(system) // page + 1
    num_pages = min(need, int(args.kv_gb * 2 ** 30) // page_bytes)
    prompt_lens = [len(r.prompt) for r in requests]
    print(f"Workload: {num} requests, prompts {min(prompt_lens)}-{max(prompt_lens)} tokens (mean "
          f"{np.mean(prompt_lens):.0f}) of which a {len(system)}-token system prompt (cached), {args.new_tokens} new "
          f"tokens each; {args.max_batch // 2} arrive at step 0, then one every {args.gap} steps; at most "
          f"{args.max_batch} in flight, {args.max_step_tokens} tokens per step (chunked prefill); KV cache "
          f"{num_pages} pages of {page} ({num_pages * page_bytes / 2 ** 30:.1f} GiB); sampling temperature 0.7, "
          f"top-k 50, top-p 0.9")
    rows = serve_all(weights, names, system, requests, page, args.max_batch, args.max_step_tokens, num_pages, warm,
                     SamplingParams(0.7, 50, 0.9))
    print("\n" + table(rows))
    by = {r["backend"]: r for r in rows}
    if "flashinfer_triton" in by and "flashinfer" in by:
        print(f"\nflashinfer_triton / FlashInfer output tokens/s: "
              f"{by['flashinfer_triton']['output_tok_s'] / by['flashinfer']['output_tok_s']:.3f}")
    if "flashinfer_triton" in by and "sdpa" in by:
        print(f"flashinfer_triton / SDPA output tokens/s: "
              f"{by['flashinfer_triton']['output_tok_s'] / by['sdpa']['output_tok_s']:.3f}")
    path = write_results("serve", rows, "python3 examples/serve.py " + " ".join(sys.argv[1:]), extra={
        "model": {"layers": s.num_layers, "hidden": s.hidden, "heads": [s.num_qo_heads, s.num_kv_heads],
                  "head_dim": s.head_dim, "intermediate": s.intermediate, "vocab": s.vocab,
                  "dtype": str(dtype).replace("torch.", ""),
                  "weights": args.model or "random"},
        "workload": {"requests": num, "system_tokens": len(system), "user_tokens": [128, 8192],
                     "new_tokens": args.new_tokens, "max_batch": args.max_batch,
                     "max_step_tokens": args.max_step_tokens, "gap_steps": args.gap, "page_size": page,
                     "num_pages": num_pages},
        "check_passed": checks})
    print(f"results: {path}")
    if not ok:
        print("MISMATCH: flashinfer_triton failed the correctness check (see above)")
    return 0 if ok and "flashinfer_triton" in by else 1


def cpu_demo(args) -> int:
    print("No GPU found: running the serving loop at a tiny size with the Triton kernels in the CPU interpreter "
          "(TRITON_INTERPRET=1).\nTimings below measure the interpreter, not speed; `make demo` on a GPU machine "
          "serves an 8B-shaped model and compares with FlashInfer and SDPA.")
    dtype, device, page = torch.float32, torch.device("cpu"), 8
    config = hf.tiny_llama31_config()
    names = [n for n in args.backends if n != "flashinfer"]
    ok = all(run_check(config, dtype, device, names, page, scale=1, greedy=True).values())

    model = hf.build_hf_model(config, dtype, device)
    weights = DecoderWeights.from_hf(model)
    num = args.num_requests or 5
    system, requests = workload(config.vocab_size, num, 20, 8, 64, 6, max_batch=4, gap=3)
    print(f"\nServing {num} requests (prompts {min(len(r.prompt) for r in requests)}-"
          f"{max(len(r.prompt) for r in requests)} tokens incl. a 20-token system prompt, 6 new tokens each; "
          f"at most 4 in flight, 32 tokens per step) on a {config.num_hidden_layers}-layer hidden-{config.hidden_size} "
          f"Llama-3.1-style model, float32:")
    need = sum(-(-(len(r.prompt) + r.max_new_tokens) // page) for r in requests) + 4
    rows = serve_all(weights, names, system, requests, page, 4, 32, need, None, SamplingParams(0.7, 50, 0.9))
    print("\n" + table(rows))
    ok &= {r["backend"] for r in rows} == set(names)
    print(f"\n{'OK' if ok else 'MISMATCH'}: the serving loop on flashinfer_triton's kernels "
          f"{'matches' if ok else 'does not match'} the Hugging Face model run with SDPA.")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 requests instead of 64 (GPU)")
    ap.add_argument("--num-requests", type=int, default=0)
    ap.add_argument("--backends", type=lambda s: [b for b in s.split(",") if b], default=list(BACKENDS),
                    help="comma-separated subset of " + ",".join(BACKENDS))
    ap.add_argument("--model", default=None, help="a local Hugging Face checkpoint directory (Llama/Qwen2)")
    ap.add_argument("--layers", type=int, default=32, help="layers of the random 8B-shaped model")
    ap.add_argument("--system-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-step-tokens", type=int, default=2048)
    ap.add_argument("--gap", type=int, default=4, help="steps between arrivals after the first half batch")
    ap.add_argument("--kv-gb", type=float, default=48.0, help="most GiB for the paged KV cache")
    ap.add_argument("--no-check", action="store_true", help="skip the correctness check (GPU)")
    args = ap.parse_args()
    bad = [b for b in args.backends if b not in BACKENDS]
    if bad:
        ap.error(f"--backends: unknown {bad}; expected a subset of {list(BACKENDS)}")
    t0 = time.perf_counter()
    status = gpu_demo(args) if ON_GPU else cpu_demo(args)
    print(f"serve.py: {time.perf_counter() - t0:.0f} s in all")
    return status


if __name__ == "__main__":
    sys.exit(main())
