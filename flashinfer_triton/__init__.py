"""flashinfer-triton: FlashInfer's Python API on Triton kernels, for NVIDIA and AMD GPUs.

    import flashinfer_triton as flashinfer

Public names only; each block is one API module.
"""

__version__ = "0.1.0"

# attention: decode
from .decode import (  # noqa: F401
    BatchDecodeWithPagedKVCacheWrapper,
    CUDAGraphBatchDecodeWithPagedKVCacheWrapper,
    single_decode_with_kv_cache,
)
