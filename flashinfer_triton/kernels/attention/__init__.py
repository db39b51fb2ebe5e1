"""The attention kernel family (@triton.jit code only).

- ``kernel.py``: ``attention_kernel``, the tile loop every attention API launches, and the
  declaration of its arguments (``ARG_TYPES``, ``PER_CALL_ARGS``).
- ``helpers.py``: the loop's pieces (tile bounds, KV addressing, one KV block of online softmax).
- ``variants.py``: the variant hooks and the built-in options (soft cap, ALiBi, causal, window,
  custom mask) written as hooks.
- ``merge.py``: the one LSE-merge step and the merge_state(s) kernels.
- ``elementwise.py``: tanh and RoPE.
"""


def aot_configs():
    """Every configuration the attention launchers can pick, as a covering set (the engine's
    ``flashinfer_triton/attention/coverage.py`` builds it from the config tables)."""
    from ...attention.coverage import attention_aot_configs

    return attention_aot_configs()
