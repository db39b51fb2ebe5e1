"""Opt-in ``flashinfer`` module alias: ``import flashinfer`` resolves to flashinfer_triton.

For serving engines (vLLM, SGLang) that look FlashInfer up with ``importlib.util.find_spec("flashinfer")``
and import from ``flashinfer.*`` submodules. Never on by default, and never in front of a real
FlashInfer: the finder sits at the end of ``sys.meta_path`` and first asks every finder after it, so
it only answers when no installed FlashInfer is found.

Turn it on with either

- ``flashinfer_triton.install_alias()`` in the process (before the engine imports ``flashinfer``); it
  also sets ``FLASHINFER_TRITON_ALIAS=1`` so that worker processes started afterwards get it too, or
- ``FLASHINFER_TRITON_ALIAS=1`` in the environment: ``flashinfer_triton_alias.pth``, installed at the
  top of site-packages, calls ``install()`` at interpreter start (this module is stdlib only, and
  flashinfer_triton itself is imported only when ``flashinfer`` is).

The modules are built from ``table.NAMES`` (every name the engines import and where it maps).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from typing import Optional

from . import table

ENV_VAR = "FLASHINFER_TRITON_ALIAS"
_MARKER = "__flashinfer_triton_alias__"


def env_requests_alias() -> bool:
    """True when ``FLASHINFER_TRITON_ALIAS`` is set to something other than empty or "0"."""
    return os.environ.get(ENV_VAR, "0").strip() not in ("", "0")


def _unsupported(module: str, name: str, reason: str):
    """A function (or, for a CamelCase name, a class) that raises NotImplementedError when called."""
    message = f"{module}.{name}: {reason} (flashinfer_triton's FlashInfer alias; FlashInfer is not installed)"

    if name[:1].isupper():
        def __init__(self, *args, **kwargs):
            raise NotImplementedError(message)

        return type(name, (), {"__init__": __init__, "__doc__": message, "__module__": module})

    def stub(*args, **kwargs):
        raise NotImplementedError(message)

    stub.__name__ = stub.__qualname__ = name
    stub.__module__ = module
    stub.__doc__ = message
    return stub


def resolve(module: str, name: str, entry: table.Entry):
    """The object ``flashinfer.<module>.<name>`` is bound to under the alias."""
    if entry.kind in (table.MAP, table.PENDING):
        target_module, _, attr = entry.target.partition(":")
        try:
            return getattr(importlib.import_module(target_module), attr)
        except (ImportError, AttributeError):
            if entry.kind == table.MAP:
                raise
            return _unsupported(module, name, entry.reason)
    return _unsupported(module, name, entry.reason)


def _module_getattr(module_name: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError(f"module {module_name!r} (flashinfer_triton's FlashInfer alias) has no attribute {attr!r}: "
                             f"it is not in the alias table (_flashinfer_triton_alias/table.py)")
    return __getattr__


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        setattr(module, _MARKER, True)
        module.__getattr__ = _module_getattr(name)
        if name == "flashinfer":
            module.__version__ = table.FLASHINFER_API_VERSION
            import flashinfer_triton

            module.__flashinfer_triton_version__ = flashinfer_triton.__version__
        for attr, entry in table.NAMES[name].items():
            setattr(module, attr, resolve(name, attr, entry))
        # FlashInfer's package imports its submodules, so `import flashinfer; flashinfer.sampling.x` works.
        prefix = name + "."
        for sub in table.NAMES:
            if sub.startswith(prefix) and "." not in sub[len(prefix):]:
                setattr(module, sub[len(prefix):], importlib.import_module(sub))


_LOADER = _Loader()


class AliasFinder(importlib.abc.MetaPathFinder):
    """Answers ``flashinfer`` and its table's submodules, only where nothing else provides them.

    ``defer=False`` (tests only: the alias in front of an installed FlashInfer) skips the check.
    """

    def __init__(self, defer: bool = True) -> None:
        self.defer = defer

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in table.NAMES:
            return None
        parent = fullname.rpartition(".")[0]
        if parent:
            # Submodules only under the alias package: never graft onto a real FlashInfer.
            if not getattr(sys.modules.get(parent), _MARKER, False):
                return None
        elif self.defer:
            # Finders after this one have not been asked yet: a real FlashInfer they know wins.
            later = sys.meta_path[sys.meta_path.index(self) + 1:] if self in sys.meta_path else []
            for finder in later:
                find = getattr(finder, "find_spec", None)
                spec = find(fullname, path, target) if find is not None else None
                if spec is not None:
                    return spec
        is_package = any(other.startswith(fullname + ".") for other in table.NAMES)
        return importlib.util.spec_from_loader(fullname, _LOADER, is_package=is_package)


def _finder() -> Optional[AliasFinder]:
    return next((f for f in sys.meta_path if isinstance(f, AliasFinder)), None)


def install(propagate: bool = True) -> bool:
    """Make ``import flashinfer`` resolve to flashinfer_triton where no FlashInfer is installed.

    Parameters
    ----------
    propagate : bool
        Also set ``FLASHINFER_TRITON_ALIAS=1`` in ``os.environ``, so that processes started later
        (an engine's workers) turn the alias on at start-up through ``flashinfer_triton_alias.pth``.

    Returns
    -------
    bool
        True when ``import flashinfer`` now gives the alias; False when a real FlashInfer is
        importable (or already imported) and keeps precedence.
    """
    if _finder() is None:
        sys.meta_path.append(AliasFinder())
    if propagate:
        os.environ[ENV_VAR] = "1"
    loaded = sys.modules.get("flashinfer")
    if loaded is not None:
        return bool(getattr(loaded, _MARKER, False))
    spec = importlib.util.find_spec("flashinfer")
    return spec is not None and spec.loader is _LOADER


def uninstall() -> None:
    """Remove the finder, drop the alias modules from ``sys.modules`` and unset ``FLASHINFER_TRITON_ALIAS``."""
    finder = _finder()
    if finder is not None:
        sys.meta_path.remove(finder)
    for name in list(sys.modules):
        if (name == "flashinfer" or name.startswith("flashinfer.")) and getattr(sys.modules[name], _MARKER, False):
            del sys.modules[name]
    os.environ.pop(ENV_VAR, None)


def is_active() -> bool:
    """True when the finder is installed."""
    return _finder() is not None


def install_from_env() -> None:
    """Called by ``flashinfer_triton_alias.pth`` at interpreter start."""
    if env_requests_alias():
        install(propagate=False)
