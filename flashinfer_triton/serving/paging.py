"""Pages of the KV cache: a pool that hands them out and takes them back, and the host-side
description of one step (page tables in FlashInfer's CSR form, token positions) that every backend
plans from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch


class PagePool:
    """Free page ids plus reservations: a request reserves the pages it can ever need when it is
    admitted, takes them as its KV grows and gives back the rest when it finishes, so a running
    request never waits for a page (no preemption needed). Ids start shuffled, as a cache that has
    served for a while would be, so page tables are never accidentally contiguous."""

    def __init__(self, num_pages: int, seed: int = 0) -> None:
        if num_pages < 1:
            raise ValueError(f"num_pages: expected a positive int, got {num_pages}")
        self.num_pages = num_pages
        self._free = np.random.default_rng(seed).permutation(num_pages).tolist()
        self._reserved = 0

    @property
    def available(self) -> int:
        """Pages neither in use nor reserved."""
        return len(self._free) - self._reserved

    @property
    def num_free(self) -> int:
        return len(self._free)

    def reserve(self, n: int) -> bool:
        if n > self.available:
            return False
        self._reserved += n
        return True

    def take(self, n: int) -> List[int]:
        """``n`` pages out of this caller's reservation."""
        if n > self._reserved:
            raise RuntimeError(f"take({n}): only {self._reserved} pages are reserved")
        self._reserved -= n
        pages, self._free = self._free[len(self._free) - n:], self._free[: len(self._free) - n]
        return pages

    def give_back(self, pages: Sequence[int], unused_reservation: int) -> None:
        self._free.extend(pages)
        self._reserved -= unused_reservation


@dataclass
class StepBatch:
    """One step of the loop on the host: ``B`` requests, decode requests first (one row each),
    then prefill chunks; ``T`` rows (tokens) in all. A request's rows are its last ``qo_len`` KV
    positions after this step's append (the chunked-prefill and decode convention of FlashInfer).

    All arrays are numpy int32 (int64 for ``logit_rows``)."""

    page_size: int
    num_decode: int
    qo_indptr: np.ndarray       # [B + 1]
    kv_len: np.ndarray          # [B], after the append
    page_indptr: np.ndarray     # [B + 1]
    page_indices: np.ndarray    # [page_indptr[-1]]
    last_page_len: np.ndarray   # [B]
    tokens: np.ndarray          # [T]
    positions: np.ndarray       # [T]
    row_request: np.ndarray     # [T], the request (0..B-1) of each row
    logit_rows: np.ndarray      # [R], rows whose next-token logits are sampled

    @property
    def num_requests(self) -> int:
        return self.kv_len.shape[0]

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    def token_slots(self) -> Tuple[np.ndarray, np.ndarray]:
        """Page id and slot in the page of every row's KV (int64, ``[T]`` each)."""
        page_of_row = self.page_indptr[self.row_request].astype(np.int64) + self.positions // self.page_size
        return self.page_indices[page_of_row].astype(np.int64), (self.positions % self.page_size).astype(np.int64)

    def decode_tables(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indptr, indices, last_page_len) of the decode requests."""
        n = self.num_decode
        return self.page_indptr[: n + 1], self.page_indices[: self.page_indptr[n]], self.last_page_len[:n]

    def prefill_tables(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(qo_indptr, indptr, indices, last_page_len) of the prefill chunks, rows and pages counted
        from the first prefill request."""
        n = self.num_decode
        qo = self.qo_indptr[n:] - self.qo_indptr[n]
        indptr = self.page_indptr[n:] - self.page_indptr[n]
        return qo, indptr, self.page_indices[self.page_indptr[n]:], self.last_page_len[n:]

    @classmethod
    def build(cls, page_size: int, num_decode: int, pages: Sequence[Sequence[int]], kv_len_before: Sequence[int],
              new_tokens: Sequence[Sequence[int]], want_logits: Sequence[bool]) -> "StepBatch":
        """Describe a step. Request ``b`` owns ``pages[b]`` (exactly the pages of its KV after the append),
        has ``kv_len_before[b]`` tokens in the cache and appends ``new_tokens[b]``; its last row's
        logits are sampled when ``want_logits[b]``."""
        qo_len = np.array([len(t) for t in new_tokens], dtype=np.int64)
        kv_len = np.asarray(kv_len_before, dtype=np.int64) + qo_len
        num_pages = np.array([len(p) for p in pages], dtype=np.int64)
        if (num_pages != -(-kv_len // page_size)).any() or (qo_len[:num_decode] != 1).any():
            raise ValueError("pages: every request needs exactly ceil(kv_len / page_size) pages and every decode "
                             "request one new token")
        qo_indptr = np.concatenate([[0], np.cumsum(qo_len)])
        page_indptr = np.concatenate([[0], np.cumsum(num_pages)])
        row_request = np.repeat(np.arange(len(qo_len)), qo_len)
        positions = np.arange(qo_indptr[-1]) - qo_indptr[row_request] + (kv_len - qo_len)[row_request]
        flat = [t for toks in new_tokens for t in toks]
        i32 = lambda a: np.ascontiguousarray(a, dtype=np.int32)  # noqa: E731
        return cls(page_size, num_decode, i32(qo_indptr), i32(kv_len), i32(page_indptr),
                   i32([p for ps in pages for p in ps]), i32((kv_len - 1) % page_size + 1), i32(flat),
                   i32(positions), i32(row_request),
                   np.array([qo_indptr[b + 1] - 1 for b in range(len(qo_len)) if want_logits[b]], dtype=np.int64))


def cpu_i32(a: np.ndarray) -> torch.Tensor:
    """An int32 CPU tensor over a numpy array (what plan() wants: host data, no device round trip)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32))
