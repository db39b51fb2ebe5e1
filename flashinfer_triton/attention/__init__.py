"""The attention engine every attention API shares (decode, prefill, cascade levels, ...).

A plan() goes through these modules in order:

- ``options.py``  the problem: validated options (heads, head dims, dtypes, masks, positional
  encoding, soft cap, window, variant) -> ``AttentionOptions``.
- ``kv.py``       KV views (how the kernel addresses paged / ragged K and V) and the one page-table
  parser (``read_page_table``).
- ``device.py``   facts of the tensor's device (family, compute units, shared memory).
- ``config.py``   ``select_config(options, batch shape, device)``: block shapes, warps, stages, split
  thresholds from a table per device family; every entry names its sweep.
- ``scheduler.py`` the work list: (request, q tile, kv chunk) items, split-KV, CUDA-graph padding,
  and the metadata upload.
- ``workspace.py`` partials and merge counters at explicit offsets of the float workspace.
- ``plan.py``     ``plan_attention``: the above, in order, to a ready launcher.
- ``launcher.py`` ``AttentionLauncher``: the kernel's plan-time argument group, per-call launches.
- ``state.py``    FlashInfer's private wrapper state (``_sm_scale``, ``_causal``, ...) that engines read
  and write after plan(): the launcher run() uses for its current values.
- ``signature.py`` the kernel's argument lists, derived from its one declaration.
- ``ops.py``      the torch.library op for torch.compile.
- ``merge.py``    merge_state(s) (the LSE-merge family's host side).
- ``coverage.py`` the AOT covering set of every configuration the tables can produce.
- ``variant.py``  user variants (``AttentionVariant``): Triton hooks compiled into the kernel.

The kernels themselves (``@triton.jit`` only) live in ``flashinfer_triton/kernels/attention/``.
"""


def __getattr__(name):
    # FlashInfer's ``flashinfer.attention`` module exports the sink wrapper (imported lazily: the
    # API layer imports this package).
    if name == "BatchAttentionWithAttentionSinkWrapper":
        from ..sink import BatchAttentionWithAttentionSinkWrapper

        return BatchAttentionWithAttentionSinkWrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
