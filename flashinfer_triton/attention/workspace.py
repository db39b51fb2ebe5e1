"""The float workspace buffer: split-KV partials and merge counters at explicit offsets.

A ``Workspace`` is a byte region of the user's ``float_workspace_buffer``. Partials (float32 v and
lse rows) are carved from its start; the merge counters (int32, one per tile of a split request and
KV head) live in a reserve at its end, so that every wrapper sharing one buffer (as engines do)
agrees on where counters are and never writes partials over them. Cascade levels take disjoint
regions (``split``), so their launches never share partials or counters.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

_ALIGN = 256


# id() of the Workspace that last handed out partials or counters of each buffer (by data pointer).
# Another Workspace over the same buffer (a cascade region, a wrapper with a different size) may have
# written partials over this one's counters since, so a change of hands re-zeroes them.
_LAST_USER: Dict[int, int] = {}


def counter_reserve(size: int) -> int:
    """Bytes at the end of a region kept for merge counters: 1 MiB, or 1/16 of a small region."""
    return min(1 << 20, size // 16) // _ALIGN * _ALIGN


class Workspace:
    def __init__(self, buffer: torch.Tensor, offset: int = 0, size: Optional[int] = None):
        total = buffer.numel() * buffer.element_size()
        self.buffer = buffer
        self.offset = offset
        self.size = total - offset if size is None else size
        self._bytes = buffer.view(torch.uint8).view(-1) if buffer.is_contiguous() else None
        if self._bytes is None:
            raise ValueError("float_workspace_buffer: expected a contiguous tensor")
        self._views: Dict[tuple, tuple] = {}
        self._counters: Optional[torch.Tensor] = None  # the counter reserve, as int32
        self._zeroed = 0  # leading counters this Workspace has zeroed (see counters())

    @property
    def device(self) -> torch.device:
        return self.buffer.device

    def split(self, n: int) -> List["Workspace"]:
        """``n`` disjoint regions of equal size."""
        part = self.size // n // _ALIGN * _ALIGN
        return [Workspace(self.buffer, self.offset + i * part, part) for i in range(n)]

    @property
    def partial_capacity(self) -> int:
        return self.size - counter_reserve(self.size)

    def partials(self, rows: int, num_qo_heads: int, head_dim_vo: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """float32 partial v ``[rows * num_qo_heads * head_dim_vo]`` and lse ``[rows * num_qo_heads]``
        (views of the region; the same request returns the same views)."""
        self._claim()
        key = ("partials", rows, num_qo_heads, head_dim_vo)
        hit = self._views.get(key)
        if hit is not None:
            return hit
        n_o = rows * num_qo_heads * head_dim_vo
        n_lse = rows * num_qo_heads
        need = 4 * (n_o + n_lse)
        if need > self.partial_capacity:
            raise ValueError(f"float_workspace_buffer: this plan needs {need} bytes for split-KV partials, the "
                             f"buffer (region) has {self.partial_capacity}; pass a larger buffer (FlashInfer "
                             f"uses 128 MB) or disable_split_kv=True")
        flat = self._bytes[self.offset: self.offset + max(need, 8)].view(torch.float32)
        views = (flat[:n_o], flat[n_o:n_o + n_lse])
        self._views[key] = views
        return views

    def max_counters(self) -> int:
        return counter_reserve(self.size) // 4

    def _claim(self) -> None:
        """Mark this Workspace as its buffer's last user; if another one was, its counters must be
        zeroed again before they are handed out."""
        ptr = self._bytes.data_ptr()
        if _LAST_USER.get(ptr) != id(self):
            _LAST_USER[ptr] = id(self)
            self._zeroed = 0

    def counters(self, n: int) -> torch.Tensor:
        """``n`` int32 merge counters, at zero when the next launch reads them. The kernel leaves
        every counter it uses at zero again (its merge resets it), so only counters this Workspace
        has not handed out before need a memset (an asynchronous one on the device's stream): a plan
        per decode step launches none. CUDA-graph replays start clean for the same reason. When
        another Workspace used the buffer in between, all of them are zeroed again."""
        if n > self.max_counters():
            raise ValueError(f"float_workspace_buffer: this plan needs {n} merge counters, the buffer keeps "
                             f"{self.max_counters()}; pass a larger buffer or disable_split_kv=True")
        if self._counters is None:
            end = self.offset + self.size
            self._counters = self._bytes[end - counter_reserve(self.size): end].view(torch.int32)
        n = max(n, 1)
        self._claim()
        if n > self._zeroed:
            self._counters[self._zeroed: n].zero_()
            self._zeroed = n
        view = self._views.get(("counters", n))
        if view is None:
            view = self._views[("counters", n)] = self._counters[:n]
        return view


def partial_rows_that_fit(ws: Workspace, num_qo_heads: int, head_dim_vo: int) -> int:
    return ws.partial_capacity // (4 * num_qo_heads * (head_dim_vo + 1))


_SINGLE: Dict[tuple, Workspace] = {}
SINGLE_WORKSPACE_BYTES = 32 << 20


def single_request_workspace(device: torch.device) -> Workspace:
    """A per-device workspace for the single-request functions (FlashInfer keeps a 32 MB buffer
    for them too); calls on one stream run one after another, so they share it."""
    key = (device.type, device.index)
    ws = _SINGLE.get(key)
    if ws is None:
        ws = _SINGLE[key] = Workspace(torch.empty(SINGLE_WORKSPACE_BYTES, dtype=torch.uint8, device=device))
    return ws
