"""Plain PyTorch float64 references for flashinfer_triton.sampling (sort-based, row by row).

Kept sets follow FlashInfer: every filter keeps ``{x >= threshold}`` (ties at the threshold kept).
"""

from __future__ import annotations

import torch


def softmax(logits, temperature=None, dtype=torch.float64):
    x = logits.to(dtype)
    if temperature is not None:
        t = temperature.to(dtype)[:, None] if isinstance(temperature, torch.Tensor) else temperature
        x = x / t
    return torch.softmax(x, dim=-1)


def _per_row(v, rows):
    if isinstance(v, torch.Tensor):
        return [v[i].item() for i in range(rows)]
    return [v] * rows


def top_k_keep(x, top_k):
    """bool mask: x >= the k-th largest value of the row (all kept for k <= 0 or k >= n)."""
    x = x.double()
    keep = torch.ones_like(x, dtype=torch.bool)
    for i, k in enumerate(_per_row(top_k, x.shape[0])):
        k = int(k)
        if 0 < k < x.shape[1]:
            kth = torch.sort(x[i], descending=True).values[k - 1]
            keep[i] = x[i] >= kth
    return keep


def top_p_keep(w, top_p, base=None, within=None):
    """bool mask: w >= v for the largest v with sum(w[w >= v] (& within)) >= top_p * base
    (base 1 by default); all of ``within`` (or the row) when top_p >= 1."""
    w = w.double()
    keep = torch.ones_like(w, dtype=torch.bool) if within is None else within.clone()
    for i, p in enumerate(_per_row(top_p, w.shape[0])):
        if p >= 1.0:
            continue
        row = torch.where(keep[i], w[i], torch.zeros_like(w[i]))
        target = p * (1.0 if base is None else float(base[i]))
        # distinct values, largest first; the mass of {w >= u_j} includes every tie of u_j
        uv, counts = torch.unique(row, sorted=True, return_counts=True)
        uv, counts = uv.flip(0), counts.flip(0)
        mass = torch.cumsum(uv * counts, 0)
        ok = torch.nonzero(mass >= target)
        v = uv[ok[0, 0]] if len(ok) else uv[-1]
        keep[i] = keep[i] & (w[i] >= v)
    return keep


def min_p_keep(probs, min_p):
    p = probs.double()
    mp = min_p.double()[:, None] if isinstance(min_p, torch.Tensor) else min_p
    return p >= mp * p.max(dim=-1, keepdim=True).values


def top_k_renorm_probs(probs, top_k):
    p = probs.double()
    p = torch.where(top_k_keep(p, top_k), p, torch.zeros_like(p))
    return p / p.sum(-1, keepdim=True)


def top_p_renorm_probs(probs, top_p):
    p = probs.double()
    p = torch.where(top_p_keep(p, top_p), p, torch.zeros_like(p))
    return p / p.sum(-1, keepdim=True)


def top_k_mask_logits(logits, top_k):
    x = logits.double()
    return torch.where(top_k_keep(x, top_k), x, torch.full_like(x, float("-inf")))


def sampling_target(x, *, is_logits=False, top_k=None, top_p=None, min_p=None, joint=False):
    """(distribution [rows, n] float64, kept mask) that the sampling operators must draw from."""
    w = softmax(x) if is_logits else x.double().clamp_min(0)
    keep = w > 0
    if top_k is not None:
        kk = top_k_keep(x, top_k)
        if top_p is not None and not joint:
            base = torch.where(kk, w, torch.zeros_like(w)).sum(-1)
            keep = keep & top_p_keep(w, top_p, base=base, within=kk)
        elif top_p is not None:
            keep = keep & kk & top_p_keep(w, top_p)
        else:
            keep = keep & kk
    elif top_p is not None:
        keep = keep & top_p_keep(w, top_p)
    if min_p is not None:
        keep = keep & min_p_keep(w, min_p)
    d = torch.where(keep, w, torch.zeros_like(w))
    return d / d.sum(-1, keepdim=True), keep


def chain_first_token_distribution(draft_probs, draft_ids, target_probs):
    """Exact distribution of output_token_ids[:, 0] for one speculative step: target[:, 0]."""
    return target_probs[:, 0].double() / target_probs[:, 0].double().sum(-1, keepdim=True)


def top_k_indices(x, k, tie_large=False):
    """Per row, the indices ``top_k`` returns unsorted: every index whose value is above the k-th
    largest, in index order, then the tied indices needed to make k (the smallest ones, or the
    largest with ``tie_large``), in index order; every index in order when k is the row length."""
    x = x.double()
    if k == x.shape[1]:
        return torch.arange(k, device=x.device).expand(x.shape[0], k)
    rows = []
    for i in range(x.shape[0]):
        kth = torch.sort(x[i], descending=True).values[k - 1]
        gt = torch.nonzero(x[i] > kth).flatten()
        eq = torch.nonzero(x[i] == kth).flatten()
        need = k - gt.numel()
        eq = eq[-need:] if tie_large else eq[:need]
        rows.append(torch.cat([gt, eq]))
    return torch.stack(rows)


def inverse_cdf_consistent(dist, u, samples, tol=1e-5):
    """bool per row: ``samples`` is where the cumulative distribution (index order) of ``dist``
    [rows, n] passes ``u`` [rows], within ``tol``, and has positive probability."""
    d = dist.double()
    c = torch.cumsum(d, -1)
    rows = torch.arange(d.shape[0], device=d.device)
    s = samples.long()
    upper = c[rows, s]
    lower = upper - d[rows, s]
    u = u.double()
    return (d[rows, s] > 0) & (lower <= u + tol) & (upper >= u - tol)
