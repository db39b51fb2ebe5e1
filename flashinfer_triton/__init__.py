"""flashinfer-triton: FlashInfer's Python API on Triton kernels, for NVIDIA and AMD GPUs.

    import flashinfer_triton as flashinfer

Public names only; each block is one API module. ``install_alias()`` makes ``import flashinfer``
resolve to this library where FlashInfer is not installed (for serving engines; see README).
"""

__version__ = "0.1.0"  # the one place: pyproject.toml reads it (tool.setuptools.dynamic)

from _flashinfer_triton_alias import install as install_alias, uninstall as uninstall_alias  # noqa: E402,F401

from ._checks import checked  # noqa: F401  (checked mode: value checks before launch)

# attention: decode
from .decode import (  # noqa: F401
    BatchDecodeWithPagedKVCacheWrapper,
    CUDAGraphBatchDecodeWithPagedKVCacheWrapper,
    fast_decode_plan,
    single_decode_with_kv_cache,
)

# attention: prefill and append
from .prefill import (  # noqa: F401
    BatchPrefillWithPagedKVCacheWrapper,
    BatchPrefillWithRaggedKVCacheWrapper,
    single_prefill_with_kv_cache,
    single_prefill_with_kv_cache_return_lse,
)

# attention: block-sparse
from .sparse import BlockSparseAttentionWrapper, VariableBlockSparseAttentionWrapper  # noqa: F401

# attention sinks, and attention variants (an extension: Triton hooks compiled into the attention kernel)
from .sink import BatchAttentionWithAttentionSinkWrapper  # noqa: F401
from .attention.variant import AttentionVariant, VariantError  # noqa: F401

# MLA (DeepSeek multi-head latent attention) on a paged cache
from .mla import BatchMLAPagedAttentionWrapper  # noqa: F401

# paged KV cache
from .page import (  # noqa: F401
    append_paged_kv_cache,
    append_paged_mla_kv_cache,
    get_batch_indices_positions,
    get_seq_lens,
)

# bit packing
from .quantization import packbits, segment_packbits  # noqa: F401

# cascade: attention-state merging, cascade attention
from .cascade import merge_state, merge_state_in_place, merge_states  # noqa: F401
from .cascade import (  # noqa: F401
    BatchDecodeWithSharedPrefixPagedKVCacheWrapper,
    BatchPrefillWithSharedPrefixPagedKVCacheWrapper,
    MultiLevelCascadeAttentionWrapper,
    SharedPrefixLevels,
    split_shared_prefix,
)

# normalization
from .norm import (  # noqa: F401
    fused_add_rmsnorm,
    gemma_fused_add_rmsnorm,
    gemma_rmsnorm,
    layernorm,
    rmsnorm,
)

# rotary position embedding
from .rope import (  # noqa: F401
    apply_llama31_rope,
    apply_llama31_rope_inplace,
    apply_llama31_rope_pos_ids,
    apply_llama31_rope_pos_ids_inplace,
    apply_rope,
    apply_rope_inplace,
    apply_rope_pos_ids,
    apply_rope_pos_ids_inplace,
    apply_rope_with_cos_sin_cache,
    apply_rope_with_cos_sin_cache_inplace,
)

# gated activations
from .activation import gelu_and_mul, gelu_tanh_and_mul, silu_and_mul  # noqa: F401

# sampling
from .sampling import (  # noqa: F401
    chain_speculative_sampling,
    min_p_sampling_from_probs,
    sampling_from_logits,
    sampling_from_probs,
    softmax,
    top_k_mask_logits,
    top_k_renorm_probs,
    top_k_sampling_from_probs,
    top_k_top_p_sampling_from_logits,
    top_k_top_p_sampling_from_probs,
    top_p_renorm_probs,
    top_p_sampling_from_probs,
)
from . import sampling  # noqa: F401,E402

# top-k selection (FlashInfer's flashinfer.top_k and flashinfer.TopKTieBreak)
from .sampling import TopKTieBreak, top_k  # noqa: F401,E402
