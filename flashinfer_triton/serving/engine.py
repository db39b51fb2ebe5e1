"""The continuous-batching loop: requests arrive at given steps, are admitted while the batch and
the KV pages allow, prefill in chunks under a per-step token budget alongside the decoding
requests, and leave when they have their tokens, giving their pages back. A prompt prefix cached
with ``cache_prefix`` (a system prompt) is computed once and its full pages are shared by every
request that starts with it.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .backends import SamplingParams
from .model import DecoderWeights, forward
from .paging import PagePool, StepBatch


@dataclass
class Request:
    """A generation request. ``forced_output`` (teacher forcing, for checks) replaces each sampled
    token by the given one; the sampler still runs."""

    prompt: Sequence[int]
    max_new_tokens: int
    arrival_step: int = 0
    forced_output: Optional[Sequence[int]] = None
    # filled in by the engine
    output: List[int] = field(default_factory=list)
    num_computed: int = 0        # KV positions in the cache
    pages: List[int] = field(default_factory=list)
    num_cached_pages: int = 0    # leading pages shared from the prefix cache
    num_cached_tokens: int = 0   # the prompt tokens those pages hold (not computed for this request)
    reserved: int = 0            # pages reserved but not yet taken
    t_arrival: float = 0.0
    token_times: List[float] = field(default_factory=list)

    @property
    def prefill_done(self) -> bool:
        return self.num_computed >= len(self.prompt)

    @property
    def done(self) -> bool:
        return self.prefill_done and len(self.output) >= self.max_new_tokens

    def reset(self) -> None:
        self.output, self.pages, self.token_times = [], [], []
        self.num_computed = self.num_cached_pages = self.num_cached_tokens = self.reserved = 0


Trace = Callable[[StepBatch, List[Request], List[torch.Tensor], torch.Tensor], None]


class Engine:
    """Serve requests on ``weights`` through ``backend`` (see ``backends``).

    Parameters
    ----------
    weights : DecoderWeights
    backend : KernelBackend or SdpaBackend, built for the same spec, dtype, device and page size.
    num_pages : pages in the KV cache (each ``num_layers * 2 * page_size * Hkv * D`` elements).
    page_size : tokens per page.
    max_batch : most requests in flight.
    max_step_tokens : token budget of a step (decode rows plus prefill chunk rows).
    sampling : SamplingParams shared by all requests.
    seed : sampler seed.
    """

    def __init__(self, weights: DecoderWeights, backend, num_pages: int, page_size: int = 16, max_batch: int = 64,
                 max_step_tokens: int = 2048, sampling: SamplingParams = SamplingParams(), seed: int = 0) -> None:
        if max_batch >= max_step_tokens:
            raise ValueError(f"max_batch ({max_batch}) must be below max_step_tokens ({max_step_tokens}) so prefill "
                             f"always progresses")
        s = weights.spec
        self.weights, self.backend, self.page_size = weights, backend, page_size
        self.max_batch, self.max_step_tokens, self.sampling = max_batch, max_step_tokens, sampling
        self.kv = torch.zeros((s.num_layers, num_pages, 2, page_size, s.num_kv_heads, s.head_dim),
                              dtype=weights.dtype, device=weights.device)
        self.kv_layers = list(self.kv.unbind(0))  # fixed per-layer views: wrappers cache them by identity
        self.pool = PagePool(num_pages)
        self.generator = torch.Generator(device=weights.device).manual_seed(seed)
        self.prefix_tokens: tuple = ()
        self.prefix_pages: List[int] = []
        self.trace: Optional[Trace] = None
        self.cascade_steps = 0

    # ------------------------------------------------------------------ prefix cache

    def cache_prefix(self, tokens: Sequence[int]) -> int:
        """Compute the KV of ``tokens`` once and keep its full pages for every later request whose
        prompt starts with them. Returns the number of cached tokens (a multiple of page_size)."""
        if self.prefix_pages:
            self.pool.give_back(self.prefix_pages, 0)
        self.prefix_tokens, self.prefix_pages = (), []
        req = Request(list(tokens), 0)
        self._loop([req], keep_pages=True)
        full = len(tokens) // self.page_size
        self.prefix_pages = req.pages[:full]
        self.pool.give_back(req.pages[full:], req.reserved)
        self.prefix_tokens = tuple(tokens[: full * self.page_size])
        return len(self.prefix_tokens)

    # ------------------------------------------------------------------ serving

    def serve(self, requests: Sequence[Request], progress: bool = False, desc: str = "") -> Dict[str, float]:
        """Run ``requests`` to completion; return throughput and latency figures (see ``stats``)."""
        bar = None
        if progress:
            try:
                from tqdm import tqdm

                bar = tqdm(total=sum(r.max_new_tokens for r in requests), desc=desc, unit="tok", mininterval=1.0)
            except ImportError:
                bar = None
        t0 = time.perf_counter()
        steps = self._loop(list(requests), bar=bar)
        wall = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        return stats(requests, wall, steps, self.cascade_steps)

    def _loop(self, requests: List[Request], keep_pages: bool = False, bar=None) -> int:
        for r in requests:
            r.reset()
        pending = deque(sorted(requests, key=lambda r: r.arrival_step))
        waiting: deque = deque()
        running: List[Request] = []
        step = steps_run = 0
        self.cascade_steps = 0
        while pending or waiting or running:
            if not (waiting or running) and pending[0].arrival_step > step:
                step = pending[0].arrival_step  # idle until the next arrival
            now = time.perf_counter()
            while pending and pending[0].arrival_step <= step:
                r = pending.popleft()
                r.t_arrival = now
                waiting.append(r)
            while waiting and len(running) < self.max_batch and self._admit(waiting[0], idle=not running):
                running.append(waiting.popleft())
            produced = self._step(running)
            steps_run += 1
            if bar is not None and produced:
                bar.update(produced)
                bar.set_postfix(running=len(running), waiting=len(waiting) + len(pending), refresh=False)
            for r in [r for r in running if r.done]:
                running.remove(r)
                if not keep_pages:
                    self.pool.give_back(r.pages[r.num_cached_pages:], r.reserved)
                    r.reserved = 0
            step += 1
        return steps_run

    def _admit(self, r: Request, idle: bool) -> bool:
        n = len(self.prefix_tokens)
        if n and len(r.prompt) > n and tuple(r.prompt[:n]) == self.prefix_tokens:
            r.pages, r.num_cached_pages = list(self.prefix_pages), len(self.prefix_pages)
            r.num_computed = r.num_cached_tokens = n
        # The last sampled token is never appended: the KV peaks at prompt + max_new_tokens - 1.
        need = -(-(len(r.prompt) + max(r.max_new_tokens - 1, 0)) // self.page_size) - r.num_cached_pages
        if self.pool.reserve(need):
            r.reserved = need
            return True
        if idle:
            raise ValueError(f"request of {len(r.prompt)} + {r.max_new_tokens} tokens needs {need} pages; the cache "
                             f"has {self.pool.available} available")
        r.pages, r.num_cached_pages, r.num_computed, r.num_cached_tokens = [], 0, 0, 0
        return False

    def _step(self, running: List[Request]) -> int:
        decode = [r for r in running if r.prefill_done]
        budget = self.max_step_tokens - len(decode)
        chunks = []
        for r in running:
            if not r.prefill_done and budget > 0:
                n = min(len(r.prompt) - r.num_computed, budget)
                chunks.append((r, n))
                budget -= n
        batch = decode + [r for r, _ in chunks]
        new_tokens = [[r.output[-1]] for r in decode] + [list(r.prompt[r.num_computed: r.num_computed + n])
                                                         for r, n in chunks]
        for r, toks in zip(batch, new_tokens):
            grow = -(-(r.num_computed + len(toks)) // self.page_size) - len(r.pages)
            if grow > 0:
                r.pages += self.pool.take(grow)
                r.reserved -= grow
        want = [True] * len(decode) + [r.num_computed + n == len(r.prompt) and r.max_new_tokens > 0 for r, n in chunks]
        sb = StepBatch.build(self.page_size, len(decode), [r.pages for r in batch], [r.num_computed for r in batch],
                             new_tokens, want)
        tokens, logit_rows = self.backend.plan(sb)
        self.cascade_steps += int(self.backend.used_cascade)
        capture = [] if self.trace is not None else None
        logits = forward(self.weights, self.backend, self.kv_layers, tokens, logit_rows, capture)
        sampled = self.backend.sample(logits, self.sampling, self.generator).tolist() if len(sb.logit_rows) else []
        now = time.perf_counter()
        if self.trace is not None:
            self.trace(sb, batch, capture, logits)
        for r, toks in zip(batch, new_tokens):
            r.num_computed += len(toks)
        for r, tok in zip([r for r, w in zip(batch, want) if w], sampled):
            if r.forced_output is not None:
                tok = r.forced_output[len(r.output)]
            r.output.append(int(tok))
            r.token_times.append(now)
        return len(sampled)


def _pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def stats(requests: Sequence[Request], wall_s: float, steps: int, cascade_steps: int = 0) -> Dict[str, float]:
    """Throughput (generated tokens per second, and all tokens computed per second: prompt tokens
    outside the prefix cache plus generated ones), time to first
    token (arrival to the first sampled token) and inter-token latency (between a request's
    consecutive tokens), in milliseconds: mean, median and 99th percentile."""
    ttft = [(r.token_times[0] - r.t_arrival) * 1e3 for r in requests if r.token_times]
    itl = [(b - a) * 1e3 for r in requests for a, b in zip(r.token_times, r.token_times[1:])]
    out_tokens = sum(len(r.output) for r in requests)
    prefill_tokens = sum(len(r.prompt) - r.num_cached_tokens for r in requests)
    return {
        "requests": len(requests),
        "steps": steps,
        "cascade_steps": cascade_steps,
        "output_tokens": out_tokens,
        "prompt_tokens": prefill_tokens,
        "wall_s": wall_s,
        "output_tok_s": out_tokens / wall_s,
        "total_tok_s": (out_tokens + prefill_tokens) / wall_s,
        "ttft_mean_ms": statistics.fmean(ttft) if ttft else float("nan"),
        "ttft_p50_ms": _pct(ttft, 0.5),
        "ttft_p99_ms": _pct(ttft, 0.99),
        "itl_mean_ms": statistics.fmean(itl) if itl else float("nan"),
        "itl_p50_ms": _pct(itl, 0.5),
        "itl_p99_ms": _pct(itl, 0.99),
    }
