"""The decoder the serving loop runs: shapes read from a Hugging Face config, weights taken from a
Hugging Face model (QKV and gate/up fused into one matrix each), and one forward pass over a step's
ragged batch of tokens in which every norm, RoPE, KV append, attention and activation goes through
the backend.

Only the matrix multiplies and the embedding lookup are plain PyTorch (cuBLAS on a GPU): this
library has no GEMM, and neither has FlashInfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

_ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding of a config: ``kind`` "default" (rotate-half, base ``theta``) or "llama3"
    (Llama 3.1 frequency smoothing with ``factor``, ``low_freq_factor``, ``high_freq_factor`` and
    ``old_context_len``)."""

    kind: str
    theta: float
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    old_context_len: int = 8192


@dataclass(frozen=True)
class ModelSpec:
    """The shapes and constants of a Llama/Qwen2-style decoder (RMSNorm, RoPE, GQA, SwiGLU)."""

    num_layers: int
    hidden: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rms_eps: float
    rope: RopeSpec

    @classmethod
    def from_hf_config(cls, config) -> "ModelSpec":
        """Read a ``transformers`` config (4.x or 5.x field names). Architectures or options the
        loop does not implement raise ``NotImplementedError`` naming them."""
        model_type = getattr(config, "model_type", None)
        if model_type not in _ARCHITECTURES:
            raise NotImplementedError(f"model_type={model_type!r}: the serving loop implements {_ARCHITECTURES}")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise NotImplementedError(f"hidden_act={config.hidden_act!r}: only SwiGLU (silu) MLPs are implemented")
        if getattr(config, "mlp_bias", False):
            raise NotImplementedError("mlp_bias=True: MLP projections with bias are not implemented")
        if getattr(config, "use_sliding_window", False):
            raise NotImplementedError("use_sliding_window=True: sliding-window attention is not implemented here")
        layer_types = getattr(config, "layer_types", None)
        if layer_types and any(t != "full_attention" for t in layer_types):
            raise NotImplementedError(f"layer_types={sorted(set(layer_types))}: only full-attention layers are "
                                      f"implemented")
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(num_layers=config.num_hidden_layers, hidden=config.hidden_size, num_qo_heads=heads,
                   num_kv_heads=getattr(config, "num_key_value_heads", None) or heads, head_dim=head_dim,
                   intermediate=config.intermediate_size, vocab=config.vocab_size, rms_eps=float(config.rms_norm_eps),
                   rope=_rope_spec(config))


def _rope_spec(config) -> RopeSpec:
    # transformers 5 keeps everything in ``rope_parameters``; 4.x has ``rope_theta`` + ``rope_scaling``.
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None) or {}
    if not params:
        params = dict(scaling)
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) != 1.0:
        raise NotImplementedError("partial_rotary_factor: partial rotary embeddings are not implemented")
    theta = float(params["rope_theta"])
    if kind == "default":
        return RopeSpec("default", theta)
    if kind == "llama3":
        return RopeSpec("llama3", theta, float(params["factor"]), float(params["low_freq_factor"]),
                        float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))
    raise NotImplementedError(f"rope_type={kind!r}: the serving loop implements 'default' and 'llama3'")


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor      # [hidden]
    w_qkv: torch.Tensor          # [(Hq + 2 Hkv) D, hidden]
    b_qkv: Optional[torch.Tensor]  # [(Hq + 2 Hkv) D] (Qwen2) or None
    w_o: torch.Tensor            # [hidden, Hq D]
    mlp_norm: torch.Tensor       # [hidden]
    w_gate_up: torch.Tensor      # [2 I, hidden]: gate rows first, as silu_and_mul expects
    w_down: torch.Tensor         # [hidden, I]


@dataclass
class DecoderWeights:
    """The tensors of a decoder, in the model's dtype and device."""

    spec: ModelSpec
    embed: torch.Tensor          # [vocab, hidden]
    layers: List[LayerWeights]
    norm: torch.Tensor           # [hidden]
    lm_head: torch.Tensor        # [vocab, hidden] (the embedding itself when tied)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @classmethod
    def from_hf(cls, model) -> "DecoderWeights":
        """Take the weights of a ``*ForCausalLM`` from ``transformers`` (Llama/Qwen2 layout:
        ``model.layers[i].self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, the two RMSNorms).
        The fused matrices are new tensors; every other tensor is shared with ``model``."""
        spec = ModelSpec.from_hf_config(model.config)
        layers = []
        with torch.no_grad():
            for layer in model.model.layers:
                a, m = layer.self_attn, layer.mlp
                biases = [p.bias for p in (a.q_proj, a.k_proj, a.v_proj)]
                b_qkv = torch.cat(biases) if biases[0] is not None else None
                layers.append(LayerWeights(
                    attn_norm=layer.input_layernorm.weight.detach(),
                    w_qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                    b_qkv=b_qkv, w_o=a.o_proj.weight.detach(),
                    mlp_norm=layer.post_attention_layernorm.weight.detach(),
                    w_gate_up=torch.cat([m.gate_proj.weight, m.up_proj.weight]),
                    w_down=m.down_proj.weight.detach()))
        return cls(spec, model.model.embed_tokens.weight.detach(), layers, model.model.norm.weight.detach(),
                   model.lm_head.weight.detach())


def forward(weights: DecoderWeights, backend, kv_layers: List[torch.Tensor], tokens: torch.Tensor,
            logit_rows: torch.Tensor, capture: Optional[list] = None) -> torch.Tensor:
    """One step of the decoder over the planned batch (``backend.plan(step)`` came first).

    Parameters
    ----------
    weights : DecoderWeights
    backend : a planned backend (``backends.KernelBackend`` or ``backends.SdpaBackend``).
    kv_layers : per layer, the paged KV cache ``[num_pages, 2, page_size, Hkv, D]`` (NHD).
    tokens : ``[T]`` int32 token ids of the step (decode rows first, then prefill chunks).
    logit_rows : ``[R]`` int64 rows of ``tokens`` whose next-token logits are wanted.
    capture : optional list; receives each layer's attention output ``[T, Hq * D]`` (before o_proj).

    Returns
    -------
    logits : ``[R, vocab]`` in the model dtype.
    """
    spec = weights.spec
    eps = spec.rms_eps
    t = tokens.shape[0]
    nq, nk, d = spec.num_qo_heads, spec.num_kv_heads, spec.head_dim
    h = F.embedding(tokens, weights.embed)
    residual = None
    for i, lw in enumerate(weights.layers):
        if residual is None:
            residual, x = h, backend.rmsnorm(h, lw.attn_norm, eps)
        else:
            x = h
            backend.fused_add_rmsnorm(x, residual, lw.attn_norm, eps)
        qkv = F.linear(x, lw.w_qkv, lw.b_qkv)
        q = qkv[:, : nq * d].view(t, nq, d)
        k = qkv[:, nq * d: (nq + nk) * d].view(t, nk, d)
        v = qkv[:, (nq + nk) * d:].view(t, nk, d)
        backend.rope_inplace(q, k)
        backend.append_kv(k, v, kv_layers[i])
        o = backend.attention(q, kv_layers[i]).view(t, nq * d)
        if capture is not None:
            capture.append(o)
        h = F.linear(o, lw.w_o)
        backend.fused_add_rmsnorm(h, residual, lw.mlp_norm, eps)
        h = F.linear(backend.silu_and_mul(F.linear(h, lw.w_gate_up)), lw.w_down)
    # The last residual add and the final norm only on the rows whose logits are wanted (none in a step
    # of mid-prompt chunks: FlashInfer's norm kernels reject an empty grid with "invalid argument").
    if logit_rows.numel() == 0:
        return h.new_empty((0, weights.lm_head.shape[0]))
    h, residual = h[logit_rows], residual[logit_rows]
    backend.fused_add_rmsnorm(h, residual, weights.norm, eps)
    return F.linear(h, weights.lm_head)
