"""CPU demo (no GPU found): a batch of requests decoding step by step against a paged KV cache,
through the real Triton kernels in the interpreter, checked against a float64 PyTorch reference.

    TRITON_INTERPRET=1 python examples/cpu_demo.py
"""

import math
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before the kernels are imported

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import flashinfer_triton as flashinfer  # noqa: E402


def reference(q, k, v):
    """q [Hq, D], k/v [n, Hkv, D] -> [Hq, D], float64."""
    g = q.shape[0] // k.shape[1]
    k = k.double().repeat_interleave(g, 1)
    v = v.double().repeat_interleave(g, 1)
    s = torch.einsum("hd,nhd->hn", q.double(), k) / math.sqrt(q.shape[-1])
    return torch.einsum("hn,nhd->hd", torch.softmax(s, -1), v)


def main():
    print("No GPU found: running the Triton kernels in the CPU interpreter (TRITON_INTERPRET=1).")
    print("This is a correctness demo; `make demo` on a GPU machine runs the decode benchmark instead.\n")
    torch.manual_seed(0)
    hq, hkv, d, page_size, dtype = 8, 2, 64, 16, torch.float16
    prompt_lens = [5, 40, 17, 1]
    num_pages = 32
    cache = torch.zeros(num_pages, 2, page_size, hkv, d, dtype=dtype)
    free_pages = torch.randperm(num_pages).tolist()  # non-contiguous page ids
    pages = [[] for _ in prompt_lens]
    lens = [0] * len(prompt_lens)
    history_k = [torch.empty(0, hkv, d, dtype=dtype) for _ in prompt_lens]
    history_v = [torch.empty(0, hkv, d, dtype=dtype) for _ in prompt_lens]

    def append(i, k, v):
        """Append tokens of request i with flashinfer.append_paged_kv_cache."""
        n = k.shape[0]
        while (lens[i] + n + page_size - 1) // page_size > len(pages[i]):
            pages[i].append(free_pages.pop())
        indptr = torch.tensor([0, len(pages[i])], dtype=torch.int32)
        indices = torch.tensor(pages[i], dtype=torch.int32)
        last = torch.tensor([(lens[i] + n - 1) % page_size + 1], dtype=torch.int32)
        batch_idx, pos = flashinfer.get_batch_indices_positions(
            torch.tensor([0, n], dtype=torch.int32), torch.tensor([lens[i] + n], dtype=torch.int32), n)
        flashinfer.append_paged_kv_cache(k, v, batch_idx, pos, cache, indices, indptr, last)
        lens[i] += n
        history_k[i] = torch.cat([history_k[i], k])
        history_v[i] = torch.cat([history_v[i], v])

    for i, n in enumerate(prompt_lens):
        append(i, torch.randn(n, hkv, d).to(dtype), torch.randn(n, hkv, d).to(dtype))

    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(torch.empty(8 << 20, dtype=torch.uint8))
    worst = 0.0
    for step in range(4):
        for i in range(len(prompt_lens)):  # this step's new token of every request
            append(i, torch.randn(1, hkv, d).to(dtype), torch.randn(1, hkv, d).to(dtype))
        indptr = torch.tensor([0] + list(torch.tensor([len(p) for p in pages]).cumsum(0)), dtype=torch.int32)
        indices = torch.tensor(sum(pages, []), dtype=torch.int32)
        last = torch.tensor([(n - 1) % page_size + 1 for n in lens], dtype=torch.int32)
        wrapper.plan(indptr, indices, last, hq, hkv, d, page_size, q_data_type=dtype)
        q = torch.randn(len(prompt_lens), hq, d).to(dtype)
        out, lse = wrapper.run(q, cache, return_lse=True)
        errs = [(out[i].double() - reference(q[i], history_k[i], history_v[i])).abs().max().item()
                for i in range(len(prompt_lens))]
        worst = max(worst, max(errs))
        print(f"step {step}: kv lengths {lens}  max |out - float64 reference| = {max(errs):.2e}  "
              f"(lse base 2, request 0 head 0: {lse[0, 0].item():.4f})")
    ok = worst < 5e-3
    print(f"\n{'OK' if ok else 'MISMATCH'}: batch decode over a paged cache matches the reference (worst {worst:.2e}).")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
