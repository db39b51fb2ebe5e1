"""Model definitions from Hugging Face ``transformers`` (imported here only, lazily: it is the
``demo`` extra, not a dependency of the library).

Why our own forward over the HF modules' weights rather than registering an attention function
with ``transformers.AttentionInterface``: that interface hands over one layer's ``q, k, v`` after
HF's own RoPE, with a dense mask, per call; it has no place for a paged cache, a page table planned
once per step for all layers, chunked prefill or cascade, and the norms, RoPE and SwiGLU would stay
HF's PyTorch code. HF's own continuous-batching manager changes between releases. So the HF model
gives the architecture, the config, the random initialisation or the checkpoint loading, and the
reference (its SDPA forward); ``model.forward`` runs the same weights on this library's kernels.
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple, Union

import torch


def llama3_8b_config(num_layers: int = 32, vocab_size: int = 128256, max_position_embeddings: int = 16384):
    """Llama-3-8B's shapes: hidden 4096, 32 query / 8 KV heads of 128, SwiGLU 14336, RoPE base 5e5."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=4096, intermediate_size=14336, num_hidden_layers=num_layers,
                       num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                       max_position_embeddings=max_position_embeddings, rope_theta=500000.0,
                       tie_word_embeddings=False)


def tiny_llama31_config(num_layers: int = 2, vocab_size: int = 384):
    """A small Llama-3.1-style config for the CPU tier: hidden 64, 4 query / 1 KV heads of 64 (the
    attention kernels' smallest head dim), Llama 3.1 RoPE scaling."""
    from transformers import LlamaConfig

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=160, num_hidden_layers=num_layers,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
                       max_position_embeddings=131072, rope_parameters=rope,
                       tie_word_embeddings=False)


def build_hf_model(config_or_path: Union[object, str, os.PathLike], dtype: torch.dtype, device, seed: int = 0):
    """A ``*ForCausalLM``: random weights from a config (initialised directly on ``device``), or a
    local checkpoint directory (``save_pretrained`` layout; nothing is downloaded)."""
    from transformers import AutoModelForCausalLM

    if isinstance(config_or_path, (str, os.PathLike)):
        model = AutoModelForCausalLM.from_pretrained(config_or_path, dtype=dtype, local_files_only=True,
                                                     attn_implementation="sdpa").to(device)
    else:
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config_or_path, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


@torch.inference_mode()
def teacher_forced(model, tokens: Sequence[int]) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Run ``model`` (its SDPA attention) on one sequence. Returns each layer's attention output
    (the input of ``o_proj``, ``[L, Hq * D]``) and the logits ``[L, vocab]``."""
    captured: List[torch.Tensor] = []
    hooks = [layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, args: captured.append(args[0][0]))
             for layer in model.model.layers]
    try:
        ids = torch.tensor([list(tokens)], device=model.device)
        logits = model(input_ids=ids, use_cache=False).logits[0]
    finally:
        for h in hooks:
            h.remove()
    return captured, logits


@torch.inference_mode()
def greedy(model, prompt: Sequence[int], max_new_tokens: int) -> List[int]:
    """Greedy decoding by full recomputation (no cache): the plainest reference."""
    ids = list(prompt)
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids], device=model.device), use_cache=False).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]
