"""Sweep the sampling kernels' block shapes (streaming BLOCK and warps for the sampler; search tile
SEARCH_BLOCK x PIVOTS for the exact threshold search of the renorm filters) on the benchmark rows,
to pick SAMPLING_TABLE in kernels/sampling.py. Prints microseconds per configuration.

    PYTHONPATH=. python3 benchmarks/tune_sampling.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.harness import time_graph  # noqa: E402
from flashinfer_triton.kernels import sampling as K  # noqa: E402

VOCAB = 128256


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", default="1024,2048,4096,8192")
    ap.add_argument("--warps", default="4,8,16")
    ap.add_argument("--no-renorm", action="store_true")
    args = ap.parse_args()
    blocks = [int(b) for b in args.blocks.split(",")]
    warps_list = [int(w) for w in args.warps.split(",")]
    print(f"STREAM_STAGES = {K.STREAM_STAGES}")
    torch.manual_seed(0)
    for batch in (1, 64, 512):
        probs = torch.softmax(torch.randn(batch, VOCAB, device="cuda") * 3, -1)
        dummy_i = torch.zeros(1, dtype=torch.int32, device="cuda")
        dummy_f = torch.zeros(1, dtype=torch.float32, device="cuda")
        u = torch.rand(batch, 2, device="cuda")
        out = torch.empty(batch, dtype=torch.int32, device="cuda")
        valid = torch.empty(batch, dtype=torch.bool, device="cuda")
        for (name, k, p), block, warps in itertools.product(
                (("top_k=10", 10, 1.0), ("top_k=1000", 1000, 1.0), ("top_p=0.5", 0, 0.5), ("top_p=0.9", 0, 0.9)),
                blocks, warps_list):
            def run():
                K.sample_kernel[(batch,)](probs, dummy_i, dummy_i, dummy_f, dummy_f, u, out, valid, probs.stride(0),
                                          VOCAB, k, p, 0.0, 1 if k else 0, 1 if p < 1 else 0, 0, 1,
                                          HAS_INDICES=False, IS_LOGITS=False, BLOCK=block, SEARCH_BLOCK=256,
                                          PIVOTS=32, num_warps=warps)
            try:
                us = time_graph(run, reps=30)
                print(f"sample batch {batch:4d} {name:11s} BLOCK {block:5d} warps {warps:2d}: {us:9.1f} us", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"sample batch {batch} {name} BLOCK {block} warps {warps}: failed {type(exc).__name__}: {exc}"[:200])
        if args.no_renorm:
            continue
        ren = torch.empty_like(probs)
        for (sb, piv), warps in itertools.product(((256, 32), (512, 16), (1024, 8), (2048, 4)), (8, 16)):
            def run():
                K.filter_kernel[(batch,)](probs, ren, dummy_i, dummy_f, probs.stride(0), ren.stride(0), VOCAB, 100,
                                          1.0, 1, 0, MODE=K.MODE_TOP_K_RENORM, BLOCK=4096, SEARCH_BLOCK=sb,
                                          PIVOTS=piv, num_warps=warps)
            try:
                us = time_graph(run, reps=10)
                print(f"top_k_renorm(k=100) batch {batch:4d} SEARCH_BLOCK {sb:5d} PIVOTS {piv:2d} warps {warps:2d}: "
                      f"{us:9.1f} us", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"renorm batch {batch} {sb}x{piv} failed {type(exc).__name__}: {exc}"[:200])


if __name__ == "__main__":
    main()
