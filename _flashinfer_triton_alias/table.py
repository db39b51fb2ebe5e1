"""Every ``flashinfer`` name that vLLM's and SGLang's FlashInfer code imports, and where the alias maps it.

``NAMES[module][name]`` is an ``Entry``:

- ``MAP``: the flashinfer_triton object ``target`` ("module:attribute"); it must exist.
- ``PENDING``: ``target`` once flashinfer_triton has it; until then a stub that raises
  ``NotImplementedError(reason)`` when called (not at import, so the engine module still imports).
- ``UNSUPPORTED``: a feature of another GPU or library (trtllm-gen, cuDNN, XQA, NVFP4): a stub that
  raises ``NotImplementedError(reason)`` when called.

``used_by`` names the engine sources that import the name (empty: FlashInfer's public API only).

``ABSENT`` lists what must *not* resolve: engines probe these (``hasattr``, ``find_spec``, a guarded
import) to choose a code path, and a stub there would send them down a path that then raises.
Names in neither table raise ``AttributeError`` (``ImportError`` in ``from flashinfer.x import y``).
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Tuple

# The FlashInfer release whose Python API is mirrored; the alias reports it as flashinfer.__version__
# (vLLM's sampler requires >= 0.2.3; SGLang checks the flashinfer_python distribution instead).
FLASHINFER_API_VERSION = "0.6.18"

MAP = "map"
PENDING = "pending"
UNSUPPORTED = "unsupported"


class Entry(NamedTuple):
    kind: str
    target: str
    reason: str
    used_by: Tuple[str, ...]


def _map(target: str, *used_by: str) -> Entry:
    return Entry(MAP, target, "", used_by)


def _pending(target: str, reason: str, *used_by: str) -> Entry:
    return Entry(PENDING, target, reason, used_by)


def _unsupported(reason: str, *used_by: str) -> Entry:
    return Entry(UNSUPPORTED, "", reason, used_by)


# Engine sources (current main unless a version is named).
V_FI = "vllm/v1/attention/backends/flashinfer.py"
V_FI_OLD = "vllm/v1/attention/backends/flashinfer.py (<= 0.11)"
V_MLA = "vllm/v1/attention/backends/mla/flashinfer_mla.py"
V_MLA_COMMON = "vllm/v1/attention/backends/mla/common.py"
V_MLA_PREFILL = "vllm/v1/attention/backends/mla/prefill/*.py"
V_SAMPLER = "vllm/v1/sample/ops/topk_topp_sampler.py"
V_ROPE = "vllm/model_executor/layers/rotary_embedding/common.py"
S_FI = "sglang/srt/layers/attention/flashinfer_backend.py"
S_FI_OLD = "sglang/srt/layers/attention/flashinfer_backend.py (<= 0.5)"
S_MLA = "sglang/srt/layers/attention/flashinfer_mla_backend.py"
S_TRTLLM = "sglang/srt/layers/attention/trtllm_*_backend.py"
S_SAMPLER = "sglang/srt/layers/sampler.py"
S_NORM = "sglang/srt/layers/layernorm.py"
S_VISION = "sglang/srt/layers/attention/vision.py"

_TRTLLM = "trtllm-gen kernels (NVIDIA Blackwell, FlashInfer's cubins); use the wrappers' fa2/auto path"
_CUDNN = "cuDNN attention (NVIDIA only); use BatchPrefillWithRaggedKVCacheWrapper"
_XQA = "XQA kernels (NVIDIA only); use BatchDecodeWithPagedKVCacheWrapper"
_FP4 = "NVFP4 tensors (trtllm-gen, NVIDIA Blackwell)"

_DECODE = "flashinfer_triton.decode:"
_PREFILL = "flashinfer_triton.prefill:"
_CASCADE = "flashinfer_triton.cascade:"
_PAGE = "flashinfer_triton.page:"
_SAMPLING = "flashinfer_triton.sampling:"
_COMPAT = "_flashinfer_triton_alias.compat:"

_decode = {
    "BatchDecodeWithPagedKVCacheWrapper": _map(_DECODE + "BatchDecodeWithPagedKVCacheWrapper", V_FI, S_FI),
    "CUDAGraphBatchDecodeWithPagedKVCacheWrapper": _map(_DECODE + "CUDAGraphBatchDecodeWithPagedKVCacheWrapper"),
    "single_decode_with_kv_cache": _map(_DECODE + "single_decode_with_kv_cache"),
    "fast_decode_plan": _map(_DECODE + "fast_decode_plan", S_FI),
    "get_seq_lens": _map(_PAGE + "get_seq_lens", V_FI_OLD, S_FI_OLD),
    "_get_range_buf": _map(_COMPAT + "_get_range_buf", V_FI, S_FI_OLD),
    "trtllm_batch_decode_with_kv_cache": _unsupported(_TRTLLM, V_FI_OLD, S_TRTLLM),
    "trtllm_batch_decode_with_kv_cache_mla": _unsupported(_TRTLLM, V_MLA, S_TRTLLM),
    "xqa_batch_decode_with_kv_cache": _unsupported(_XQA),
    "cudnn_batch_decode_with_kv_cache": _unsupported(_CUDNN),
}

_prefill = {
    "BatchPrefillWithPagedKVCacheWrapper": _map(_PREFILL + "BatchPrefillWithPagedKVCacheWrapper", V_FI, S_FI),
    "BatchPrefillWithRaggedKVCacheWrapper": _map(_PREFILL + "BatchPrefillWithRaggedKVCacheWrapper", V_FI, V_MLA_COMMON,
                                                 S_FI, S_MLA),
    "single_prefill_with_kv_cache": _map(_PREFILL + "single_prefill_with_kv_cache"),
    "single_prefill_with_kv_cache_return_lse": _map(_PREFILL + "single_prefill_with_kv_cache_return_lse"),
    "trtllm_batch_context_with_kv_cache": _unsupported(_TRTLLM, V_FI_OLD),
    "trtllm_ragged_attention_deepseek": _unsupported(_TRTLLM, V_MLA_PREFILL),
    "trtllm_fmha_v2_prefill": _unsupported(_TRTLLM),
    "cudnn_batch_prefill_with_kv_cache": _unsupported(_CUDNN, V_MLA_COMMON, S_VISION),
}

_cascade = {
    name: _map(_CASCADE + name, *used)
    for name, used in (
        ("merge_state", (S_FI,)),
        ("merge_state_in_place", ()),
        ("merge_states", ()),
        ("MultiLevelCascadeAttentionWrapper", (V_FI,)),
        ("BatchDecodeWithSharedPrefixPagedKVCacheWrapper", ()),
        ("BatchPrefillWithSharedPrefixPagedKVCacheWrapper", ()),
    )
}

_page = {
    "append_paged_kv_cache": _map(_PAGE + "append_paged_kv_cache"),
    "get_batch_indices_positions": _map(_PAGE + "get_batch_indices_positions"),
    "get_seq_lens": _map(_PAGE + "get_seq_lens"),
    "append_paged_mla_kv_cache": _map(_PAGE + "append_paged_mla_kv_cache"),
}

_sampling = {
    name: _map(_SAMPLING + name, *used)
    for name, used in (
        ("softmax", ()),
        ("sampling_from_probs", ()),
        ("sampling_from_logits", ()),
        ("top_k_sampling_from_probs", (V_SAMPLER,)),
        ("top_p_sampling_from_probs", (V_SAMPLER,)),
        ("min_p_sampling_from_probs", (S_SAMPLER,)),
        ("top_k_top_p_sampling_from_probs", (S_SAMPLER,)),
        ("top_k_top_p_sampling_from_logits", (V_SAMPLER,)),
        ("top_k_renorm_probs", ()),
        ("top_p_renorm_probs", ()),
        ("top_k_renorm_prob", (S_SAMPLER,)),
        ("top_p_renorm_prob", (S_SAMPLER,)),
        ("top_k_mask_logits", ()),
        ("chain_speculative_sampling", ()),
    )
}

_norm = {
    name: _map("flashinfer_triton.norm:" + name, *used)
    for name, used in (
        ("rmsnorm", ()),
        ("fused_add_rmsnorm", (S_NORM,)),
        ("gemma_rmsnorm", ()),
        ("gemma_fused_add_rmsnorm", ()),
        ("layernorm", ()),
    )
}

_rope = {
    name: _map("flashinfer_triton.rope:" + name, *((V_ROPE,) if name == "apply_rope_with_cos_sin_cache_inplace" else ()))
    for name in (
        "apply_rope", "apply_rope_inplace", "apply_rope_pos_ids", "apply_rope_pos_ids_inplace",
        "apply_llama31_rope", "apply_llama31_rope_inplace", "apply_llama31_rope_pos_ids",
        "apply_llama31_rope_pos_ids_inplace", "apply_rope_with_cos_sin_cache", "apply_rope_with_cos_sin_cache_inplace",
    )
}

_activation = {name: _map("flashinfer_triton.activation:" + name) for name in ("silu_and_mul", "gelu_and_mul",
                                                                                "gelu_tanh_and_mul")}

_quantization = {name: _map("flashinfer_triton.quantization:" + name) for name in ("packbits", "segment_packbits")}

_utils = {
    "FP4Tensor": _unsupported(_FP4, V_FI_OLD),
    "_get_range_buf": _map(_COMPAT + "_get_range_buf"),
}

_mla = {"BatchMLAPagedAttentionWrapper": _map("flashinfer_triton.mla:BatchMLAPagedAttentionWrapper", S_MLA)}

_sparse = {
    name: _map("flashinfer_triton.sparse:" + name)
    for name in ("BlockSparseAttentionWrapper", "VariableBlockSparseAttentionWrapper", "convert_bsr_mask_layout")
}

# The top level re-exports what FlashInfer's __init__ does, for the modules above.
_top = {}
for _names in (_decode, _prefill, _cascade, _page, _sampling, _norm, _rope, _activation, _quantization, _mla, _sparse):
    _top.update({k: v for k, v in _names.items() if not k.startswith(("_", "trtllm_", "xqa_", "cudnn_"))
                 and k not in ("top_k_renorm_prob", "top_p_renorm_prob", "convert_bsr_mask_layout")})
_top["cudnn_batch_decode_with_kv_cache"] = _decode["cudnn_batch_decode_with_kv_cache"]
del _names

NAMES: Dict[str, Dict[str, Entry]] = {
    "flashinfer": _top,
    "flashinfer.decode": _decode,
    "flashinfer.prefill": _prefill,
    "flashinfer.cascade": _cascade,
    "flashinfer.page": _page,
    "flashinfer.sampling": _sampling,
    "flashinfer.norm": _norm,
    "flashinfer.rope": _rope,
    "flashinfer.activation": _activation,
    "flashinfer.quantization": _quantization,
    "flashinfer.utils": _utils,
    "flashinfer.mla": _mla,
    "flashinfer.sparse": _sparse,
    # FlashInfer's JIT generator; custom variants are Triton functions here (issue 14). Imported by
    # FlashInfer's own __init__; engines only touch it in guarded probes.
    "flashinfer.jit": {},
}

# (module, attribute or None for the module itself, why it must stay absent)
ABSENT = (
    ("flashinfer.decode", "_grouped_size_compiled_for_decode_kernels",
     f"{S_FI}: should_use_tensor_core() takes FlashInfer <= 0.1.6's decode heuristics when it imports"),
    ("flashinfer", "fp4_quantize", "vllm/utils/flashinfer.py: has_flashinfer_cutlass_fused_moe() probes it"),
    ("flashinfer", "nvfp4_block_scale_interleave", "vllm/utils/flashinfer.py: FP4 MoE probe"),
    ("flashinfer", "trtllm_fp4_block_scale_moe", "vllm/utils/flashinfer.py: FP4 MoE probe"),
    ("flashinfer", "mm_fp4", "vllm/utils/flashinfer.py: FP4 GEMM probe"),
    ("flashinfer.norm", "rmsnorm_fp4quant", "vllm: guarded import selects the NVFP4 norm"),
    ("flashinfer.fused_moe", None, "vllm/utils/flashinfer.py: has_flashinfer_moe() is find_spec of it"),
    ("flashinfer.comm", None, "vllm/utils/flashinfer.py: has_flashinfer_comm() is find_spec of it"),
    ("flashinfer.autotuner", None, "vllm/utils/flashinfer.py: autotune falls back to a null context"),
    ("flashinfer.gemm", None, "vllm: FlashInfer GEMM probes"),
)
