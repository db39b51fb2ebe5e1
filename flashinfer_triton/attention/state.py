"""FlashInfer's wrapper state after plan(): the private attributes serving engines read and write.

FlashInfer's wrappers keep the plan's options in private attributes (``_causal``, ``_sm_scale``,
``_logits_soft_cap``, ...) that its run() reads at run time. vLLM asserts on them before every
run; SGLang's legacy ``forward(..., causal=, sm_scale=)`` and the engines' fast plans
(``fast_decode_plan``) write them after plan(). ``WrapperState`` is the wrappers' common part:
run() gets the launcher for the attributes' current values from ``_launcher()``, which is the
planned one while they are unchanged (one tuple comparison), else one derived for that value tuple
(``AttentionLauncher.with_options``: no re-plan, no device work, so it is safe inside a CUDA-graph
capture), kept until the next plan. ``_plan_info`` is the plan run() uses (an engine may assign
what ``_cached_module.plan`` returned to it, as with FlashInfer).
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np
import torch

from .options import resolved_backend, with_run_options
from .plan import PlannedAttention


@functools.lru_cache(maxsize=None)
def int_workspace_buffers(device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins for FlashInfer's ``_int_workspace_buffer`` (device) and
    ``_pin_memory_int_workspace_buffer`` (pinned host): FlashInfer keeps its plan metadata there;
    here the metadata has its own buffer (``scheduler.DeviceMetadata``), so engines that only pass
    them along (to ``_cached_module.plan``) get small tensors shared by every wrapper."""
    return (torch.empty(256, dtype=torch.uint8, device=device),
            torch.empty(256, dtype=torch.uint8, pin_memory=device.type == "cuda"))


class DeviceCopy:
    """A FlashInfer attribute holding the device copy of a plan() index argument
    (``_paged_kv_indptr_buf``, ``_qo_indptr_buf``, ...). Under CUDA graphs it is the fixed buffer
    given to the constructor. Otherwise plan() stores the host int64 array it read anyway and the
    int32 device tensor is made on the first read: plan() pays nothing for an attribute no engine
    reads without CUDA graphs, and the values are those of the plan (a later change to the
    caller's host tensor does not show). Engines may assign it (``fast_decode_plan`` does)."""

    def __set_name__(self, owner, name):
        self.slot = "_stored" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        value = obj.__dict__.get(self.slot)
        if isinstance(value, np.ndarray):
            value = obj.__dict__[self.slot] = torch.from_numpy(value.astype(np.int32)).to(obj.device)
        return value

    def __set__(self, obj, value):
        obj.__dict__[self.slot] = value


_NO_PLAN = object()  # never a wrapper's _plan_info, so run() before plan() takes the checked path


class WrapperState:
    """Mixin of the batch attention wrappers. A subclass names, in ``_RUN_OPTIONS``, the options its
    run() reads from attributes (``"sm_scale"`` is read from ``self._sm_scale``; the names are
    ``options.with_run_options``' keywords), and ``_run_key()`` returns those attributes in that
    order (a plain tuple expression: the cheapest read, and one torch.compile traces)."""

    _RUN_OPTIONS: Tuple[str, ...] = ()

    def _run_key(self) -> tuple:
        raise NotImplementedError

    def _init_state(self, backend: str) -> None:
        self._backend = backend
        self._int_workspace_buffer, self._pin_memory_int_workspace_buffer = int_workspace_buffers(self.device)
        self._plan_info: Optional[PlannedAttention] = None
        self._last = (_NO_PLAN, None, None)  # (plan, option values, launcher) of the last run()
        self._derived = (None, {})       # (plan, {option values: launcher})

    @property
    def planned(self) -> Optional[PlannedAttention]:
        """The engine's plan of the current batch (options, kernel config, work list), or None."""
        return self._plan_info

    def _set_plan(self, planned: PlannedAttention, exact: bool) -> None:
        """Install a plan (the caller has set the run-option attributes). ``exact``: the plan was
        made with exactly the attributes' options (plan()), so its launcher serves them as is."""
        self._plan_info = planned
        self._backend = resolved_backend(self._backend)
        if exact:
            self._last = (planned, self._run_key(), planned.launcher)

    def _launcher(self):
        """The launcher for the current plan and run-option attributes (run()'s hot path)."""
        planned = self._plan_info
        if planned is None:
            raise RuntimeError("run(): call plan() first")
        key = self._run_key()
        last = self._last
        if last[0] is planned and last[1] == key:
            return last[2]
        return self._derive_launcher(planned, key)

    @torch.compiler.disable  # builds and registers a launcher: eager work, never traced
    def _derive_launcher(self, planned: PlannedAttention, key: tuple):
        plan_of, launchers = self._derived
        if plan_of is not planned:
            launchers = {}
            self._derived = (planned, launchers)
        launcher = launchers.get(key)
        if launcher is None:
            opts = with_run_options(planned.opts, **dict(zip(self._RUN_OPTIONS, key)))
            launcher = planned.launcher if opts == planned.opts else planned.launcher.with_options(opts)
            launchers[key] = launcher
        self._last = (planned, key, launcher)
        return launcher
