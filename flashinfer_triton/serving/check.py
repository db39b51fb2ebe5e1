"""The loop's built-in correctness check against the same Hugging Face model run with PyTorch's SDPA.

Teacher forcing: a scenario of requests (a cached system prompt that most of them share, chunked
prefills, decodes that overlap so cascade steps happen, a late request without the system prompt)
is served with every output token forced, and each layer's attention output and the sampled
logits are compared with the HF model on the full sequences. The tolerance comes from the data:
our error against the HF model in float64 must be at most twice the error of the HF model in the
serving dtype (plus one unit of rounding), as in the kernel tests.

Greedy: the same prompts decoded greedily must give the tokens of HF's own greedy decoding
(meaningful in float32, where the two computations differ by rounding only).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from . import hf
from .backends import SamplingParams
from .engine import Engine, Request
from .model import DecoderWeights


@dataclass
class Scenario:
    system_prompt: List[int]
    requests: List[Request]
    page_size: int
    max_batch: int
    max_step_tokens: int


def scenario(vocab: int, page_size: int, scale: int = 1, seed: int = 0) -> Scenario:
    """Requests whose arrivals, chunking and prefix sharing cover every path of the loop: a system
    prompt of 2.5 pages (its half page is recomputed by each request), user parts of under one to
    several pages, a token budget that splits prefills into chunks, a request without the system
    prompt that arrives once the others decode (no shared prefix in those steps: plain decode)."""
    rng = np.random.default_rng(seed)
    toks = lambda n: rng.integers(0, vocab, n).tolist()  # noqa: E731
    system = toks(scale * (2 * page_size + page_size // 2))
    users = [5 * scale, scale * 3 * page_size + 3, 9 * scale, scale * 2 * page_size + 1]
    new = [6, 4, 7, 5]
    arrivals = [0, 0, 2, 3]
    reqs = [Request(system + toks(u), n, a, forced_output=toks(n)) for u, n, a in zip(users, new, arrivals)]
    reqs.append(Request(toks(scale * page_size + 2), 4, 6, forced_output=toks(4)))
    return Scenario(system, reqs, page_size, max_batch=4, max_step_tokens=scale * (page_size + page_size // 2))


@dataclass
class Comparison:
    name: str
    err: float      # max |ours - float64| / max |float64|
    ref_err: float  # the same for HF in the serving dtype
    bound: float

    @property
    def ok(self) -> bool:
        return self.err <= self.bound


def _rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return (x - ref).abs().max().item() / max(ref.abs().max().item(), 1e-30)


def _compare(name, ours, ref64, reflow, dtype, factor=2.0) -> Comparison:
    err, ref_err = _rel_err(ours, ref64), _rel_err(reflow, ref64)
    eps = torch.finfo(dtype).eps
    return Comparison(name, err, ref_err, factor * ref_err + (4 * eps if dtype == torch.float32 else eps))


def _engine(weights, backend, sc: Scenario, sampling: SamplingParams) -> Engine:
    need = sum(-(-(len(r.prompt) + r.max_new_tokens) // sc.page_size) for r in sc.requests)
    return Engine(weights, backend, num_pages=need + len(sc.system_prompt) // sc.page_size + 4,
                  page_size=sc.page_size, max_batch=sc.max_batch, max_step_tokens=sc.max_step_tokens,
                  sampling=sampling)


def teacher_forced_check(hf_model, backend, sc: Scenario, hf_model_f64=None) -> Tuple[List[Comparison], dict]:
    """Serve ``sc`` with forced outputs through ``backend``; compare every layer's attention output
    and the sampled logits with ``hf_model`` (SDPA) in float64 and in its own dtype. Returns the
    comparisons and the engine's stats (steps, cascade steps, ...)."""
    weights = DecoderWeights.from_hf(hf_model)
    dtype = weights.dtype
    if hf_model_f64 is None:
        hf_model_f64 = copy.deepcopy(hf_model).double()
    engine = _engine(weights, backend, sc, SamplingParams())
    engine.cache_prefix(sc.system_prompt)
    index = {id(r): i for i, r in enumerate(sc.requests)}
    rows: Dict[Tuple[int, int], List[torch.Tensor]] = {}
    logit_rows: Dict[Tuple[int, int], torch.Tensor] = {}

    def trace(sb, batch, capture, logits):
        capture, logits = [layer.cpu() for layer in capture], logits.cpu()
        for t in range(sb.num_rows):
            rows[(index[id(batch[sb.row_request[t]])], int(sb.positions[t]))] = [layer[t] for layer in capture]
        for j, t in enumerate(sb.logit_rows):
            logit_rows[(index[id(batch[sb.row_request[t]])], int(sb.positions[t]))] = logits[j]

    engine.trace = trace
    with torch.inference_mode():
        st = engine.serve(sc.requests)
    engine.trace = None
    if engine.pool.num_free + len(engine.prefix_pages) != engine.pool.num_pages:
        raise AssertionError("pages leaked: not every page came back to the pool after the requests finished")

    ours_attn = [[] for _ in weights.layers]
    lo_attn = [[] for _ in weights.layers]
    hi_attn = [[] for _ in weights.layers]
    ours_logits, lo_logits, hi_logits = [], [], []
    for i, r in enumerate(sc.requests):
        seq = list(r.prompt) + list(r.forced_output[:-1])
        lo, lo_l = hf.teacher_forced(hf_model, seq)
        hi, hi_l = hf.teacher_forced(hf_model_f64, seq)
        positions = [p for p in range(len(seq)) if (i, p) in rows]
        if positions != list(range(r.num_cached_tokens, len(seq))):
            raise AssertionError(f"request {i}: the loop computed positions {positions[:3]}..., expected "
                                 f"{r.num_cached_tokens}..{len(seq) - 1}")
        for layer in range(len(weights.layers)):
            ours_attn[layer].append(torch.stack([rows[(i, p)][layer] for p in positions]))
            lo_attn[layer].append(lo[layer][positions].cpu())
            hi_attn[layer].append(hi[layer][positions].cpu())
        sampled = list(range(len(r.prompt) - 1, len(seq)))
        ours_logits.append(torch.stack([logit_rows[(i, p)] for p in sampled]))
        lo_logits.append(lo_l[sampled].cpu())
        hi_logits.append(hi_l[sampled].cpu())
    out = [_compare(f"layer {layer} attention", torch.cat(ours_attn[layer]), torch.cat(hi_attn[layer]),
                    torch.cat(lo_attn[layer]), dtype) for layer in range(len(weights.layers))]
    out.append(_compare("logits", torch.cat(ours_logits), torch.cat(hi_logits), torch.cat(lo_logits), dtype))
    return out, st


def greedy_check(hf_model, backend, sc: Scenario) -> List[Tuple[List[int], List[int]]]:
    """Serve ``sc``'s prompts greedily; return (ours, HF greedy) token lists per request."""
    weights = DecoderWeights.from_hf(hf_model)
    engine = _engine(weights, backend, sc, SamplingParams(temperature=0.0))
    engine.cache_prefix(sc.system_prompt)
    reqs = [Request(r.prompt, r.max_new_tokens, r.arrival_step) for r in sc.requests]
    with torch.inference_mode():
        engine.serve(reqs)
    return [(r.output, hf.greedy(hf_model, r.prompt, r.max_new_tokens)) for r in reqs]


def run_checks(hf_model, backends: Sequence[Tuple[str, Callable[[], object]]], sc: Scenario, greedy: bool,
               log=print) -> Dict[str, bool]:
    """Teacher-forced (and, with ``greedy``, greedy) checks of each ``(name, make_backend)``;
    prints one line per check and returns whether each backend passed (an exception counts as a
    failure and does not stop the other backends' checks)."""
    hf_f64 = copy.deepcopy(hf_model).double()
    dtype = str(next(hf_model.parameters()).dtype).replace("torch.", "")
    results = {}
    for name, make in backends:
        try:
            comps, _ = teacher_forced_check(hf_model, make(), sc, hf_f64)
            passed = all(c.ok for c in comps)
            worst = max(comps, key=lambda c: c.err / c.bound)
            log(f"  {name:>18}: teacher-forced, {len(comps) - 1} layers' attention + logits vs HF SDPA: "
                f"{'OK' if passed else 'MISMATCH'} (worst {worst.name}: error {worst.err:.2e}, bound "
                f"{worst.bound:.2e}, HF in {dtype} {worst.ref_err:.2e})")
            for c in comps:
                if not c.ok:
                    log(f"{'':>22}{c.name}: error {c.err:.3e} > bound {c.bound:.3e}")
            if greedy:
                pairs = greedy_check(hf_model, make(), sc)
                same = sum(a == b for a, b in pairs)
                log(f"  {name:>18}: greedy decoding, {same}/{len(pairs)} requests token for token equal to HF's "
                    f"greedy")
                passed &= same == len(pairs)
        except Exception as exc:  # noqa: BLE001 - report, and go on with the other backends
            log(f"  {name:>18}: FAILED with {type(exc).__name__}: {exc}")
            passed = False
        results[name] = passed
    return results
