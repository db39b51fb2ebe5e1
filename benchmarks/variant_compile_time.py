"""A new attention variant's first-call compile time, and Triton's on-disk cache across processes.

Compiles the attention kernel with a variant that no cache has seen (its hook's source carries a
fresh random constant) for a target, ahead of time with ``triton.compile`` (what the first run()
compiles; no GPU needed), in a fresh process with an empty ``TRITON_CACHE_DIR``; then again in a
second process over the same cache directory, which loads the binary from disk. The variant is the
T5 bias of examples/attention_variants.py at its AOT shape (bf16 causal paged prefill, D 128).

    PYTHONPATH=. python benchmarks/variant_compile_time.py [--target cuda:90] [--runs 2]

Prints one line per process; ``--json`` also writes benchmarks/results/variant_compile.json (and a
copy to ``$OUT`` when set), with the CPU count and load average (compiles are CPU work).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent('''
    import os, sys, time
    t_start = time.perf_counter()
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {hook_dir!r})
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import flashinfer_triton as flashinfer
    from flashinfer_triton.attention.coverage import variant_aot_config
    from fresh_hook import fresh_t5_bias
    backend, arch = {target!r}.split(":")
    target = GPUTarget(backend, int(arch) if arch.isdigit() else arch, 32 if backend == "cuda" else 64)
    variant = flashinfer.AttentionVariant(logits_transform=fresh_t5_bias, tensors=("bias_table",))
    cfg = variant_aot_config(variant, (torch.float32,))
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=cfg.kernel, signature=cfg.signature, constexprs=cfg.constexprs),
                              target=target, options={{"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}})
    t1 = time.perf_counter()
    print(f"{{t1 - t0:.3f}} {{t1 - t_start:.3f}} {{len(os.listdir(os.environ['TRITON_CACHE_DIR']))}}")
''')

HOOK = textwrap.dedent('''
    import triton
    import triton.language as tl


    @triton.jit
    def fresh_t5_bias(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
        # a constant no cache has seen: {salt}
        rel = tl.minimum(tl.maximum(kv_pos[None, :] - q_pos[:, None], -128), 128)
        return logits + tl.load(params[0] + qo_head.to(tl.int64)[:, None] * 257 + (rel + 128)) * {scale}
''')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="cuda:90", help="cuda:90, cuda:80, hip:gfx942, hip:gfx950")
    ap.add_argument("--runs", type=int, default=2, help="processes over the same cache directory")
    ap.add_argument("--json", action="store_true", help="write benchmarks/results/variant_compile.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        salt = random.getrandbits(48)
        with open(os.path.join(tmp, "fresh_hook.py"), "w") as f:
            f.write(HOOK.format(salt=salt, scale=1.0 + (salt % 1000) * 1e-9))
        cache = os.path.join(tmp, "triton_cache")
        os.makedirs(cache)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["TRITON_CACHE_DIR"] = cache
        for run in range(args.runs):
            code = CHILD.format(root=ROOT, hook_dir=tmp, target=args.target)
            res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(res.stderr)
            compile_s, process_s, entries = res.stdout.split()[-3:]
            what = "cold (empty cache)" if run == 0 else "warm (cache from the first process)"
            print(f"process {run + 1}, {what}: triton.compile {float(compile_s):.2f} s, whole process "
                  f"{float(process_s):.2f} s (imports included); cache entries {entries}")
            rows.append(dict(process=run + 1, cache="cold" if run == 0 else "warm", target=args.target,
                             compile_s=float(compile_s), process_s=float(process_s)))
    if args.json:
        payload = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                   "cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0], "rows": rows}
        for directory in (os.path.join(ROOT, "benchmarks", "results"), os.environ.get("OUT")):
            if directory:
                path = os.path.join(directory, "variant_compile.json")
                with open(path, "w") as f:
                    json.dump(payload, f, indent=1)
                print(f"wrote {path}")


if __name__ == "__main__":
    main()
