"""A small continuous-batching server on this library's kernels: the demo of ``make demo`` and the
end-to-end test of the CPU tier.

- ``model``: shapes from a Hugging Face config, its weights, one forward pass over a step's batch.
- ``paging``: the page pool and the host description of a step (CSR page tables, positions).
- ``backends``: ``KernelBackend(flashinfer_triton)`` / ``KernelBackend(flashinfer)`` and the
  PyTorch ``SdpaBackend``, planned once per step for every layer.
- ``engine``: requests, admission, chunked prefill, prefix cache, sampling, latency figures.
- ``hf``: ``transformers`` models (random weights from a config, or a local checkpoint) and the
  SDPA reference runs; ``check``: the teacher-forced and greedy checks against them.

``transformers`` (the ``demo`` extra) is imported only by ``hf`` and ``check``.
"""

from .backends import KernelBackend, SamplingParams, SdpaBackend  # noqa: F401
from .engine import Engine, Request, stats  # noqa: F401
from .model import DecoderWeights, ModelSpec, RopeSpec, forward  # noqa: F401
from .paging import PagePool, StepBatch  # noqa: F401
