"""FlashInfer host helpers that engines import and that need no kernel: the same behaviour, here."""

from __future__ import annotations

from typing import Dict, Tuple

import torch

_RANGE_BUFS: Dict[Tuple[int, str], torch.Tensor] = {}


def _get_range_buf(seq_len: int, device) -> torch.Tensor:
    """``arange(seq_len)`` as int32 on ``device``, a view of one cached buffer per power of two
    (FlashInfer's ``flashinfer.utils._get_range_buf``: vLLM and SGLang build ``qo_indptr`` with it)."""
    size = 1 << max(int(seq_len) - 1, 0).bit_length()
    key = (size, str(torch.device(device)))
    buf = _RANGE_BUFS.get(key)
    if buf is None:
        buf = _RANGE_BUFS[key] = torch.arange(size, dtype=torch.int32, device=device)
    return buf[:seq_len]
