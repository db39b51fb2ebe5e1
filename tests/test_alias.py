"""The opt-in ``flashinfer`` alias: the name table, precedence of a real FlashInfer, the .pth switch.

No kernel runs here (engine call sequences are in test_engine_replay.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import _flashinfer_triton_alias as alias
import flashinfer_triton
from _flashinfer_triton_alias import table
from tests.alias_support import flashinfer_alias

ROOT = Path(__file__).resolve().parents[1]
# Checked before any alias is installed. Where FlashInfer itself is installed (the GPU machine) the
# alias stays out of the way, so the tests of "no FlashInfer here" behaviour do not apply.
HAS_REAL_FLASHINFER = importlib.util.find_spec("flashinfer") is not None
needs_no_flashinfer = pytest.mark.skipif(HAS_REAL_FLASHINFER, reason="FlashInfer is installed here")

ROWS = [(m, n, e) for m, names in table.NAMES.items() for n, e in names.items()]


def _target(entry):
    module, _, attr = entry.target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


@pytest.fixture(scope="module")
def fi():
    with flashinfer_alias() as module:
        yield module


@pytest.mark.parametrize("module,name,entry", ROWS, ids=[f"{m}.{n}" for m, n, _ in ROWS])
def test_table_entry_resolves(fi, module, name, entry):
    """MAP: the very flashinfer_triton object (so the alias costs nothing per call); PENDING: that
    object once it exists, else NotImplementedError on call; UNSUPPORTED: NotImplementedError on call."""
    obj = getattr(importlib.import_module(module), name)
    target = _target(entry) if entry.kind in (table.MAP, table.PENDING) else None
    if entry.kind == table.MAP:
        assert target is not None, f"{entry.target} does not exist"
        assert obj is target
        return
    if target is not None:
        assert obj is target
        return
    with pytest.raises(NotImplementedError, match=f"{module}.{name}: "):
        obj(None)


@pytest.mark.parametrize("module,attr,why", table.ABSENT, ids=[f"{m}.{a or ''}" for m, a, _ in table.ABSENT])
def test_probed_names_stay_absent(fi, module, attr, why):
    if attr is None:
        assert importlib.util.find_spec(module) is None, why
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(module)
    else:
        assert not hasattr(importlib.import_module(module), attr), why


def test_package_surface(fi):
    assert fi.__version__ == table.FLASHINFER_API_VERSION
    assert tuple(int(x) for x in fi.__version__.split(".")[:3]) >= (0, 2, 3)  # vLLM's sampler requires it
    assert fi.__flashinfer_triton_version__ == flashinfer_triton.__version__
    # FlashInfer's __init__ imports its submodules: `import flashinfer; flashinfer.sampling.f(...)` (vLLM).
    for sub in table.NAMES:
        if sub != "flashinfer":
            assert getattr(fi, sub.split(".", 1)[1]) is sys.modules[sub]
    with pytest.raises(AttributeError, match="not in the alias table"):
        fi.no_such_name
    with pytest.raises(ImportError):
        exec("from flashinfer.decode import _grouped_size_compiled_for_decode_kernels", {})


# The import statements of the engines' FlashInfer code, verbatim (vLLM and SGLang main, and the
# variants of the last releases).
ENGINE_IMPORTS = """
from flashinfer import (BatchDecodeWithPagedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper,
                        BatchPrefillWithRaggedKVCacheWrapper, MultiLevelCascadeAttentionWrapper)
from flashinfer.decode import _get_range_buf
from flashinfer.decode import _get_range_buf, get_seq_lens, trtllm_batch_decode_with_kv_cache
from flashinfer.decode import trtllm_batch_decode_with_kv_cache_mla
from flashinfer.prefill import trtllm_batch_context_with_kv_cache
from flashinfer.prefill import cudnn_batch_prefill_with_kv_cache
from flashinfer.utils import FP4Tensor
import flashinfer.sampling
from flashinfer.rope import apply_rope_with_cos_sin_cache_inplace
from flashinfer import (BatchDecodeWithPagedKVCacheWrapper, BatchPrefillWithPagedKVCacheWrapper,
                        BatchPrefillWithRaggedKVCacheWrapper, fast_decode_plan)
from flashinfer.cascade import merge_state
from flashinfer import BatchMLAPagedAttentionWrapper, BatchPrefillWithRaggedKVCacheWrapper
from flashinfer.sampling import (min_p_sampling_from_probs, top_k_renorm_prob, top_k_top_p_sampling_from_probs,
                                 top_p_renorm_prob)
from flashinfer.norm import fused_add_rmsnorm
"""


def test_engine_import_statements(fi):
    exec(ENGINE_IMPORTS, {})
    assert importlib.util.find_spec("flashinfer") is not None  # vLLM's has_flashinfer(), SGLang's check


def test_get_range_buf_matches_flashinfer(fi):
    import torch

    from flashinfer.decode import _get_range_buf

    for n in (1, 5, 8, 33):
        r = _get_range_buf(n, "cpu")
        assert r.dtype == torch.int32 and torch.equal(r, torch.arange(n, dtype=torch.int32))
    assert _get_range_buf(5, "cpu").data_ptr() == _get_range_buf(7, "cpu").data_ptr()  # one buffer per power of 2


def _run(code: str, env_extra=None, sitedir=None) -> str:
    """A fresh interpreter with this checkout importable and, if given, ``sitedir`` processed as a
    site directory (so its .pth files run as they would in site-packages)."""
    env = {k: v for k, v in os.environ.items() if k != alias.ENV_VAR}
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_extra or {})
    prelude = f"import site; site.addsitedir({str(sitedir)!r})\n" if sitedir else ""
    out = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = """
import importlib.util, sys
spec = importlib.util.find_spec("flashinfer")
print(spec is not None, "torch" in sys.modules)
"""


@needs_no_flashinfer
def test_off_by_default_and_pth_switch(tmp_path):
    (tmp_path / "flashinfer_triton_alias.pth").write_text((ROOT / "flashinfer_triton_alias.pth").read_text())
    assert _run(PROBE, sitedir=tmp_path) == "False False"
    assert _run(PROBE, {alias.ENV_VAR: "0"}, sitedir=tmp_path) == "False False"
    # On at start-up, importing nothing heavy until `flashinfer` itself is imported.
    assert _run(PROBE, {alias.ENV_VAR: "1"}, sitedir=tmp_path) == "True False"


@needs_no_flashinfer
def test_install_in_process_and_uninstall():
    code = """
    import importlib.util, os
    import flashinfer_triton
    assert importlib.util.find_spec("flashinfer") is None
    assert flashinfer_triton.install_alias() is True
    assert os.environ["FLASHINFER_TRITON_ALIAS"] == "1"  # worker processes get it through the .pth
    import flashinfer, flashinfer.decode
    assert flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper is flashinfer_triton.BatchDecodeWithPagedKVCacheWrapper
    flashinfer_triton.install_alias()  # idempotent
    import sys
    assert sum(type(f).__name__ == "AliasFinder" for f in sys.meta_path) == 1
    flashinfer_triton.uninstall_alias()
    assert importlib.util.find_spec("flashinfer") is None and "FLASHINFER_TRITON_ALIAS" not in os.environ
    print("ok")
    """
    assert _run(code) == "ok"


def _fake_flashinfer(root: Path) -> Path:
    pkg = root / "flashinfer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("REAL = True\n")
    (pkg / "decode.py").write_text("REAL_DECODE = True\n")
    return root


@needs_no_flashinfer
def test_real_flashinfer_wins_on_sys_path(tmp_path):
    real = _fake_flashinfer(tmp_path)
    code = f"""
    import importlib.util, sys
    import _flashinfer_triton_alias as a
    assert a.install(propagate=False) is False          # installed FlashInfer found: alias stays out
    sys.path.remove({str(real)!r})
    assert a.install(propagate=False) is True
    sys.path.append({str(real)!r})                       # appears later: still wins (finder is last)
    import flashinfer, flashinfer.decode
    assert flashinfer.REAL and flashinfer.decode.REAL_DECODE
    assert importlib.util.find_spec("flashinfer.sampling") is None  # no alias module grafted onto it
    print("ok")
    """
    assert _run(code, {"PYTHONPATH": f"{ROOT}{os.pathsep}{real}"}) == "ok"


@needs_no_flashinfer
def test_real_flashinfer_wins_over_a_later_finder(tmp_path):
    real = _fake_flashinfer(tmp_path)
    code = f"""
    import importlib.machinery, sys
    import _flashinfer_triton_alias as a
    a.install(propagate=False)

    class Late:  # a finder appended after the alias's, e.g. an editable install's
        def find_spec(self, name, path=None, target=None):
            if name == "flashinfer":
                return importlib.machinery.PathFinder.find_spec(name, [{str(real)!r}])
            return None

    sys.meta_path.append(Late())
    import flashinfer
    assert flashinfer.REAL
    print("ok")
    """
    assert _run(code) == "ok"


def test_pth_is_shipped_in_the_wheel():
    text = (ROOT / "setup.py").read_text()
    assert '"flashinfer_triton_alias.pth"' in text
    assert "flashinfer_triton_alias.pth" in (ROOT / "MANIFEST.in").read_text()
    assert (ROOT / "flashinfer_triton" / "py.typed").exists()
