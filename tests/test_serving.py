"""The serving loop end to end (flashinfer_triton.serving) against the Hugging Face model run with
PyTorch SDPA: a 2-layer, hidden-64 Llama-3.1-style decoder with random weights (seeded), a cached
system prompt shared by most requests (cascade decode steps), chunked prefills, a late request
without the prefix (plain decode steps), requests arriving and finishing at different steps."""

import pytest
import torch

from tests.helpers import DEVICE, ON_GPU

transformers = pytest.importorskip("transformers", reason="the serving loop takes its models from transformers")

import flashinfer_triton  # noqa: E402
from flashinfer_triton.serving import (  # noqa: E402
    DecoderWeights, Engine, KernelBackend, ModelSpec, Request, SamplingParams, SdpaBackend, check, hf,
)

PAGE = 8
SEED = 1  # model weights; the scenario's tokens use seed 0 (check.scenario)


@pytest.fixture(scope="module")
def tiny():
    config = hf.tiny_llama31_config()
    return config, ModelSpec.from_hf_config(config)


def _backend(name, spec, dtype):
    if name == "sdpa":
        return SdpaBackend(spec, dtype, DEVICE, PAGE)
    return KernelBackend(flashinfer_triton, spec, dtype, DEVICE, PAGE, workspace_mb=8)


def _assert_within(comps, label):
    bad = [f"{c.name}: error {c.err:.3e} > bound {c.bound:.3e} (HF low precision {c.ref_err:.3e})"
           for c in comps if not c.ok]
    assert not bad, f"{label}: " + "; ".join(bad)


@pytest.mark.parametrize("name", ["flashinfer_triton", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32] + ([torch.bfloat16] if ON_GPU else []),
                         ids=lambda d: str(d).replace("torch.", ""))
def test_loop_matches_hf_sdpa(tiny, name, dtype):
    config, spec = tiny
    model = hf.build_hf_model(config, dtype, DEVICE, seed=SEED)
    sc = check.scenario(config.vocab_size, PAGE)
    comps, st = check.teacher_forced_check(model, _backend(name, spec, dtype), sc)
    _assert_within(comps, f"{name} {dtype} seed {SEED}")
    assert len(comps) == spec.num_layers + 1
    if name != "sdpa":
        assert 0 < st["cascade_steps"] < st["steps"], f"expected cascade and plain decode steps, got {st}"
    if dtype == torch.float32:
        for i, (ours, ref) in enumerate(check.greedy_check(model, _backend(name, spec, dtype), sc)):
            assert ours == ref, f"{name}: request {i} greedy tokens {ours} != HF greedy {ref} (seed {SEED})"


def test_local_checkpoint_qwen2(tmp_path):
    """A Qwen2-style checkpoint (QKV biases) saved with save_pretrained loads from its directory
    and serves correctly (the SDPA backend: the loading and bias paths are backend independent)."""
    config = transformers.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6)
    saved = hf.build_hf_model(config, torch.float32, "cpu", seed=SEED)
    with torch.no_grad():
        for layer in saved.model.layers:  # random (non-zero) biases so the check sees them
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    saved.save_pretrained(tmp_path)
    model = hf.build_hf_model(str(tmp_path), torch.float32, DEVICE)
    weights = DecoderWeights.from_hf(model)
    assert weights.layers[0].b_qkv is not None
    assert torch.equal(weights.layers[1].w_down.cpu(), saved.model.layers[1].mlp.down_proj.weight)
    spec = ModelSpec.from_hf_config(model.config)
    comps, _ = check.teacher_forced_check(model, SdpaBackend(spec, torch.float32, DEVICE, PAGE),
                                          check.scenario(config.vocab_size, PAGE))
    _assert_within(comps, "qwen2 checkpoint")


def test_admission_waits_for_pages_and_keeps_results(tiny):
    """With a cache too small for every request at once, requests wait for pages that finished
    ones give back; the greedy outputs are those of a roomy cache, and every page comes back."""
    config, spec = tiny
    model = hf.build_hf_model(config, torch.float32, DEVICE, seed=SEED)
    weights = DecoderWeights.from_hf(model)
    sc = check.scenario(config.vocab_size, PAGE)

    def serve(num_pages):
        engine = Engine(weights, SdpaBackend(spec, torch.float32, DEVICE, PAGE), num_pages, PAGE, max_batch=4,
                        max_step_tokens=12, sampling=SamplingParams(temperature=0.0))
        engine.cache_prefix(sc.system_prompt)
        reqs = [Request(r.prompt, r.max_new_tokens, r.arrival_step) for r in sc.requests]
        with torch.inference_mode():
            st = engine.serve(reqs)
        assert engine.pool.num_free + len(engine.prefix_pages) == num_pages
        return [r.output for r in reqs], [r.token_times[-1] for r in reqs], st

    roomy, _, st_roomy = serve(200)
    largest = max(-(-(len(r.prompt) + r.max_new_tokens) // PAGE) for r in sc.requests)
    tight, done_at, st_tight = serve(largest + 2 + len(sc.system_prompt) // PAGE)
    assert tight == roomy
    assert st_tight["steps"] > st_roomy["steps"]
    assert len(set(done_at)) > 1  # requests finish at different times
    with pytest.raises(ValueError, match="pages"):
        serve(largest - 1)


def test_unsupported_configs_raise():
    base = dict(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1)
    with pytest.raises(NotImplementedError, match="hidden_act"):
        ModelSpec.from_hf_config(transformers.LlamaConfig(hidden_act="gelu", **base))
    with pytest.raises(NotImplementedError, match="rope_type"):
        ModelSpec.from_hf_config(transformers.LlamaConfig(
            rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}, **base))
    with pytest.raises(NotImplementedError, match="model_type"):
        ModelSpec.from_hf_config(transformers.GPT2Config())
