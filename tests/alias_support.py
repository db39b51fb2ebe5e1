"""The ``flashinfer`` alias for tests, in front of any installed FlashInfer (the GPU machine has one),
so that the engine replays always exercise flashinfer_triton; whatever was imported is restored."""

from __future__ import annotations

import contextlib
import importlib
import sys

from _flashinfer_triton_alias import ENV_VAR, AliasFinder


def _flashinfer_modules():
    return [k for k in sys.modules if k == "flashinfer" or k.startswith("flashinfer.")]


@contextlib.contextmanager
def flashinfer_alias():
    """Yields the alias's ``flashinfer`` module; ``import flashinfer`` gives it inside the block."""
    saved = {k: sys.modules.pop(k) for k in _flashinfer_modules()}
    finder = AliasFinder(defer=False)
    sys.meta_path.insert(0, finder)
    try:
        yield importlib.import_module("flashinfer")
    finally:
        sys.meta_path.remove(finder)
        for k in _flashinfer_modules():
            del sys.modules[k]
        sys.modules.update(saved)


__all__ = ["ENV_VAR", "flashinfer_alias"]
