"""User attention variants: small ``@triton.jit`` functions compiled into the shared attention kernel.

FlashInfer generates a CUDA kernel from C++ strings (``jit_args``) per variant; here a variant is two
optional Triton functions that the one attention kernel calls on every KV block, so it works with
every wrapper (single decode/prefill, batch decode, ragged and paged prefill, cascade levels), on
NVIDIA and AMD, and compiles in seconds (Triton's on-disk cache keeps it across processes)::

    @triton.jit
    def t5_bias(logits, q_pos, kv_pos, qo_head, kv_head, req, params):
        table, max_dist = params[0], params[4]          # a tensor and a scalar the variant declares
        rel = tl.minimum(tl.maximum(kv_pos[None, :] - q_pos[:, None], -max_dist), max_dist)
        width = 2 * max_dist + 1
        return logits + tl.load(table + qo_head[:, None] * width + rel + max_dist)

    variant = flashinfer.AttentionVariant(logits_transform=t5_bias, tensors=("table",),
                                          scalars=("max_dist",))
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, variant=variant)
    w.plan(...)
    out = w.run(q, kv_cache, table, 128)          # or w.run(q, kv_cache, *variant.args(table=table, max_dist=128))

The hooks (``BLOCK_M`` rows = query tokens x query heads of one KV head, ``BLOCK_N`` keys):

``logits_transform(logits, q_pos, kv_pos, qo_head, kv_head, req, params) -> logits``
    ``logits``: float32 ``[BLOCK_M, BLOCK_N]``, ``sm_scale * q.k`` in natural units, after the
    built-in soft cap / ALiBi of the plan. Returns float32 ``[BLOCK_M, BLOCK_N]``: the logits the
    softmax sees or, with ``use_softmax=False``, the attention weights themselves (FlashSigmoid).
``logits_mask(q_pos, kv_pos, qo_head, kv_head, req, params) -> keep``
    Returns bool ``[BLOCK_M, BLOCK_N]``; False removes the key (on top of the plan's causal /
    window / custom mask). A variant with a mask visits every block with the masked path.
``kv_range(q_first, q_last, kv_len, req, params) -> (lo, hi)``
    Optional, with a ``logits_mask``: int32 scalars bounding the key positions ``[lo, hi)`` that the
    queries at positions ``q_first..q_last`` (one tile) can see, so that the kernel skips the
    blocks outside (FlexAttention's block mask, computed in the kernel: a document mask visits only
    the tile's documents). The mask still decides every key of a visited block.

Arguments of both: ``q_pos`` int32 ``[BLOCK_M]`` the query's position in its sequence
(``kv_len - qo_len + i``: queries are the last ``qo_len`` tokens, as in the causal mask);
``kv_pos`` int32 ``[BLOCK_N]`` the key's position (0-based in the request's KV); ``qo_head``
int32 ``[BLOCK_M]``; ``kv_head`` and ``req`` (the request's index in the batch) int32 scalars;
``params`` the tuple ``(t0, t1, t2, t3, s0, s1, s2, s3)``: the variant's tensors as pointers
(``params[i]`` is the i-th of ``tensors``, unused ones a float32 dummy) and its scalars as float32
(``params[4 + j]`` the j-th of ``scalars``). Rows and keys past the end may hold any position:
clamp indices before a ``tl.load`` or load under a mask. In cascade levels positions count from
the start of each level's KV segment and ``req`` indexes that level's requests.

Query and output transforms (FlashInfer's ``QueryTransform`` / ``OutputTransform``) are plain
PyTorch before and after ``run()`` (``q * scale`` or a rotation of q, ``out * gate``): they touch each
element once, as the fused form would. Attention sinks are ``run(..., sinks=)``.

A hook that does not compile, or returns the wrong shape or dtype, raises ``VariantError`` naming the
function, its file and line, the hook signature and Triton's own message.
"""

from __future__ import annotations

import inspect
import itertools
import numbers
from typing import Dict, Optional, Sequence, Tuple

import torch

MAX_TENSORS = 4
MAX_SCALARS = 4
PARAM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2, torch.int32,
                torch.int64, torch.uint8)
HOOK_ARGS = {"logits_transform": ("logits", "q_pos", "kv_pos", "qo_head", "kv_head", "req", "params"),
             "logits_mask": ("q_pos", "kv_pos", "qo_head", "kv_head", "req", "params"),
             "kv_range": ("q_first", "q_last", "kv_len", "req", "params")}
HOOK_RESULTS = {"logits_transform": "float32 [BLOCK_M, BLOCK_N] logits", "logits_mask": "bool [BLOCK_M, BLOCK_N] keep",
                "kv_range": "(lo, hi) int32 scalars"}
_POSITIONS = "int32 q_pos [BLOCK_M], kv_pos [BLOCK_N], qo_head [BLOCK_M], kv_head and req scalars"
HOOK_ARG_TYPES = {"logits_transform": "logits float32 [BLOCK_M, BLOCK_N], " + _POSITIONS, "logits_mask": _POSITIONS,
                  "kv_range": "q_first, q_last, kv_len and req int32 scalars"}
# The kernel's compile-time checks of a hook's result (kernels/attention/variants.py) start so.
CHECK_MESSAGES = {role: f"{role} must return" for role in HOOK_ARGS}
NO_PARAMS = ((), ())
_SERIALS = itertools.count()


class VariantError(TypeError):
    """A variant's hook failed to compile into the attention kernel (or returned the wrong shape or
    dtype); the message names the function."""


def _triton_function_types():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return (JITFunction, InterpretedFunction)


def hook_signature(role: str) -> str:
    return f"{role}({', '.join(HOOK_ARGS[role])}) -> {HOOK_RESULTS[role]}"


def _where(fn) -> str:
    code = fn.fn.__code__
    return f"{code.co_filename}:{code.co_firstlineno}"


def _check_hook(role: str, fn):
    if fn is None:
        return None
    if not isinstance(fn, _triton_function_types()):
        what = getattr(fn, "__name__", type(fn).__name__)
        raise TypeError(f"{role}: expected a @triton.jit function {hook_signature(role)}, got {what!r} "
                        f"({type(fn).__name__}); decorate it with @triton.jit")
    params = list(inspect.signature(fn.fn).parameters.values())
    if len(params) != len(HOOK_ARGS[role]) or any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                                                  for p in params):
        raise TypeError(f"{role}: {fn.fn.__name__!r} ({_where(fn)}) takes ({', '.join(p.name for p in params)}); "
                        f"a {role} takes {len(HOOK_ARGS[role])} positional arguments: {hook_signature(role)}")
    return fn


def _names(kind: str, names, limit: int) -> Tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if len(names) > limit:
        raise ValueError(f"{kind}: a variant reads at most {limit} {kind} (params[{'0..3' if kind == 'tensors' else '4..7'}]), "
                         f"got {len(names)}: {names}")
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"{kind}: expected names (identifiers), got {name!r}")
    return names


class AttentionVariant:
    """An attention variant: a logits transform and/or a logits mask (``@triton.jit`` functions,
    signatures in ``flashinfer_triton/attention/variant.py``), whether the weights go through a
    softmax, and the names of the extra tensors and float scalars the hooks read.

    Parameters
    ----------
    logits_transform : @triton.jit function or None
        ``logits_transform(logits, q_pos, kv_pos, qo_head, kv_head, req, params)`` -> float32
        ``[BLOCK_M, BLOCK_N]``; ``logits`` are ``sm_scale * q.k`` (natural units).
    logits_mask : @triton.jit function or None
        ``logits_mask(q_pos, kv_pos, qo_head, kv_head, req, params)`` -> bool ``[BLOCK_M, BLOCK_N]``.
    kv_range : @triton.jit function or None
        ``kv_range(q_first, q_last, kv_len, req, params)`` -> ``(lo, hi)``: the key positions a
        tile of queries can see (blocks outside are skipped); only with a ``logits_mask``.
    use_softmax : bool
        False: the transform's output is the weight of each key, summed with V (no softmax, no LSE:
        ``return_lse``, ``sinks`` and cascade levels are refused).
    tensors : tuple of str
        Names of up to 4 tensors (any of float16/bfloat16/float32/float8/int32/int64/uint8, on the
        device) passed to ``run()`` after the KV arguments; the hooks read ``params[0..3]``.
    scalars : tuple of str
        Names of up to 4 float scalars passed after the tensors; the hooks read ``params[4..7]``
        (float32).
    name : str, optional
        For error messages; default the hooks' names.

    The same variant object can serve many wrappers; a new one compiles once per kernel
    configuration (seconds) and is cached on disk by Triton, keyed on the hooks' source.
    """

    __slots__ = ("logits_transform", "logits_mask", "kv_range", "use_softmax", "tensors", "scalars", "name", "serial")

    def __init__(self, logits_transform=None, logits_mask=None, *, kv_range=None, use_softmax: bool = True,
                 tensors: Sequence[str] = (), scalars: Sequence[str] = (), name: Optional[str] = None) -> None:
        self.logits_transform = _check_hook("logits_transform", logits_transform)
        self.logits_mask = _check_hook("logits_mask", logits_mask)
        self.kv_range = _check_hook("kv_range", kv_range)
        if kv_range is not None and logits_mask is None:
            raise ValueError("kv_range: a key range only skips blocks; it needs the logits_mask that removes the "
                             "keys outside it inside the visited blocks")
        if not isinstance(use_softmax, bool):
            raise TypeError(f"use_softmax: expected a bool, got {type(use_softmax).__name__}")
        if logits_transform is None and logits_mask is None:
            raise ValueError("AttentionVariant: give a logits_transform, a logits_mask or both")
        if not use_softmax and logits_transform is None:
            raise ValueError("use_softmax=False: the logits_transform gives each key's weight, so it is required")
        self.use_softmax = use_softmax
        self.tensors = _names("tensors", tensors, MAX_TENSORS)
        self.scalars = _names("scalars", scalars, MAX_SCALARS)
        if len(set(self.tensors + self.scalars)) != len(self.tensors) + len(self.scalars):
            raise ValueError(f"tensors/scalars: names must be distinct, got {self.tensors} and {self.scalars}")
        if name is None:
            name = "+".join(f.fn.__name__ for f in (self.logits_transform, self.logits_mask) if f is not None)
        self.name = str(name)
        # Identity for every cache (kernel launches, torch.compile's launch table): never reused.
        self.serial = next(_SERIALS)

    def __setattr__(self, key, value):
        if hasattr(self, "serial"):
            raise AttributeError("AttentionVariant is immutable: build a new one")
        object.__setattr__(self, key, value)

    def __hash__(self) -> int:
        return hash(("AttentionVariant", self.serial))

    def __eq__(self, other) -> bool:
        return self is other

    def __repr__(self) -> str:
        hooks = ", ".join(f"{role}={fn.fn.__name__}" for role, fn in self.hooks().items())
        return (f"AttentionVariant({self.name!r}: {hooks}, use_softmax={self.use_softmax}, tensors={self.tensors}, "
                f"scalars={self.scalars})")

    def hooks(self) -> Dict[str, object]:
        """The hooks that are set, by role."""
        return {role: fn for role, fn in (("logits_transform", self.logits_transform), ("logits_mask", self.logits_mask),
                                          ("kv_range", self.kv_range)) if fn is not None}

    def args(self, *values, **named) -> tuple:
        """The run() arguments in declaration order (tensors, then scalars) from positional values
        and/or names: ``w.run(q, kv, *variant.args(table=t, max_dist=128))``."""
        order = self.tensors + self.scalars
        if len(values) > len(order):
            raise TypeError(f"variant {self.name!r} takes {len(order)} arguments {order}, got {len(values)} positional")
        got = dict(zip(order, values))
        for key, value in named.items():
            if key not in order:
                raise TypeError(f"variant {self.name!r}: unknown argument {key!r}; it takes {order}")
            if key in got:
                raise TypeError(f"variant {self.name!r}: {key!r} given twice")
            got[key] = value
        missing = [n for n in order if n not in got]
        if missing:
            raise TypeError(f"variant {self.name!r}: missing {missing} (it takes {order})")
        return tuple(got[n] for n in order)

    def pack(self, args: Sequence, device: torch.device) -> Tuple[tuple, tuple]:
        """(tensors, floats) for the kernel's ``params`` from run()'s extra positional arguments."""
        n_t, n_s = len(self.tensors), len(self.scalars)
        if len(args) != n_t + n_s:
            raise TypeError(f"run(): variant {self.name!r} takes {n_t} tensor(s) {self.tensors} then {n_s} scalar(s) "
                            f"{self.scalars} after the KV arguments, got {len(args)} extra positional argument(s)")
        tensors = tuple(args[:n_t])
        for name, t in zip(self.tensors, tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: variant {self.name!r} expects a tensor here, got {type(t).__name__}")
            if t.dtype not in PARAM_DTYPES:
                raise TypeError(f"{name}: expected one of {[str(d).replace('torch.', '') for d in PARAM_DTYPES]}, "
                                f"got {str(t.dtype).replace('torch.', '')} (pass booleans as uint8)")
            if t.device != device:
                raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
        scalars = []
        for name, s in zip(self.scalars, args[n_t:]):
            if isinstance(s, torch.Tensor) or not isinstance(s, numbers.Real):
                raise TypeError(f"{name}: variant {self.name!r} expects a Python number here (a tensor would need a "
                                f"host sync; declare it under tensors=), got {type(s).__name__}")
            scalars.append(float(s))
        return tensors, tuple(scalars)

    def explain(self, exc: BaseException) -> Optional["VariantError"]:
        """A ``VariantError`` naming the hook behind ``exc`` (a Triton compile or interpreter error
        raised while launching with this variant), or None when no hook of this variant is involved."""
        chain = []
        e = exc
        while e is not None and all(e is not c for c in chain):
            chain.append(e)
            e = e.__cause__ or e.__context__
        texts = [str(c) for c in chain]
        hooks = self.hooks()
        role = kind = None
        for r, start in CHECK_MESSAGES.items():
            if r in hooks and any(start in t for t in texts):
                role, kind = r, "returns the wrong shape or dtype"
                break
        if role is None:
            for r, fn in hooks.items():
                if _raised_in(fn, chain):
                    role, kind = r, "does not compile into the attention kernel"
                    break
        if role is None:
            from ..kernels.attention.variants import user_kv_range, user_logits, user_mask

            for r, checker in (("logits_transform", user_logits), ("logits_mask", user_mask),
                               ("kv_range", user_kv_range)):
                if r in hooks and _raised_in(checker, chain):  # e.g. it returned a Python number
                    role, kind = r, "returns the wrong shape or dtype"
                    break
        if role is None:
            return None
        fn = hooks[role]
        root = chain[-1]
        detail = "\n".join(str(root).strip().splitlines()[-12:]) or type(root).__name__
        return VariantError(
            f"{role} {fn.fn.__name__!r} ({_where(fn)}) of variant {self.name!r} {kind}:\n"
            f"  {type(root).__name__}: {detail}\n"
            f"A {role} is a @triton.jit function {hook_signature(role)}; {HOOK_ARG_TYPES[role]}, params = (t0, t1, "
            f"t2, t3, s0, s1, s2, s3) with tensors {self.tensors} and scalars {self.scalars}.")


def _raised_in(fn, chain) -> bool:
    """Did an exception of ``chain`` come from inside the hook ``fn`` (its source, for Triton's
    compiler; one of its frames, for the interpreter)?"""
    code = fn.fn.__code__
    src = getattr(fn, "src", None)
    for e in chain:
        if src is not None and getattr(e, "src", None) == src:
            return True
        tb = e.__traceback__
        while tb is not None:
            f = tb.tb_frame.f_code
            if f.co_name == code.co_name and f.co_filename == code.co_filename:
                return True
            tb = tb.tb_next
    return False


def check_variant(variant) -> Optional[AttentionVariant]:
    if variant is not None and not isinstance(variant, AttentionVariant):
        raise TypeError(f"variant: expected a flashinfer_triton.AttentionVariant or None, got {type(variant).__name__}")
    return variant


def run_params(variant: Optional[AttentionVariant], args: Sequence, device: torch.device, sinks=None,
               want_lse: bool = False) -> Tuple[tuple, tuple]:
    """The kernel's variant ``params`` for one run(): ``args`` are run()'s extra positional
    arguments (the variant's tensors, then its scalars, as FlashInfer's JIT variants take them)."""
    if variant is None:
        if args:
            raise TypeError(f"run(): {len(args)} extra positional argument(s): these are a variant's tensors and "
                            f"scalars, and this wrapper has no variant= (q_scale, k_scale, v_scale, out, lse, ... are "
                            f"keyword-only)")
        return NO_PARAMS
    if not variant.use_softmax and (sinks is not None or want_lse):
        raise ValueError(f"{'sinks' if sinks is not None else 'return_lse/lse'}: variant {variant.name!r} has "
                         f"use_softmax=False, so there is no softmax denominator or log-sum-exp")
    return variant.pack(args, device)


def launch_errors(variant: Optional[AttentionVariant], exc: BaseException) -> BaseException:
    """The exception to raise for ``exc`` from a launch: a ``VariantError`` naming the user's hook
    when one is involved, else ``exc`` itself."""
    if variant is None or isinstance(exc, VariantError):
        return exc
    return variant.explain(exc) or exc

