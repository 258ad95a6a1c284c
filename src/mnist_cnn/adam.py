"""Adam for the fast path on the CPU: ``torch.optim.Adam(fused=True)``'s numbers, bit for bit,
without what ``torch.optim`` costs a process before its first step.

``torch.optim.Optimizer``'s constructor, ``step``, ``zero_grad`` and ``state_dict`` each import
``torch._dynamo`` on first use (to mark themselves as not to be compiled): 1.2–2 s of every
training process's start on a 2-core CPU, and on the CPU about 0.3 ms of bookkeeping per step.
``FusedAdam`` makes the same single call of PyTorch's fused Adam kernel per step that
``torch.optim.Adam(fused=True)`` makes, on the same state, and nothing else.

Its ``state_dict`` has ``torch.optim.Adam``'s layout, keys and types (the group's settings are
read from ``torch.optim.Adam``'s own signature, so they match the installed PyTorch), so a
checkpoint written by one loads into the other: a run saved by the plain step resumes on the
fast path and back.

    from mnist_cnn.adam import FusedAdam
    optimizer = FusedAdam(model.parameters(), lr=1e-4)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any, TypeAlias

import torch


def _adam_defaults() -> dict[str, Any]:
    """``torch.optim.Adam``'s settings and their defaults, as its param groups hold them."""
    params = inspect.signature(torch.optim.Adam.__init__).parameters
    return {k: p.default for k, p in params.items() if k not in ("self", "params")}


class FusedAdam:
    """Adam (the seed's: no AMSGrad, coupled weight decay) in one fused kernel call per step.

    CPU float parameters only. The same attributes the training code reads from a
    ``torch.optim.Adam``: ``param_groups`` (one group; its ``"lr"`` may be changed between
    steps), ``state`` (per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``), ``zero_grad``,
    ``step``, ``state_dict`` and ``load_state_dict``.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("FusedAdam got no parameters")
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"invalid {name}: {value}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas: {betas}")
        for p in params:
            if p.device.type != "cpu" or not p.is_floating_point() or p.is_complex():
                raise ValueError(
                    f"FusedAdam takes real float CPU tensors, not {p.dtype} on {p.device}"
                )
        group = _adam_defaults()
        group.update(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, fused=True)
        self.param_groups: list[dict[str, Any]] = [{"params": params, **group}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        for group in self.param_groups:
            lists: dict[torch.dtype, tuple[list[torch.Tensor], ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if not state:
                    # As torch.optim.Adam starts a fused group: a float32 step on the device.
                    state = self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                ps, gs, ms, vs, steps = lists.setdefault(p.dtype, ([], [], [], [], []))
                ps.append(p)
                gs.append(p.grad)
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            beta1, beta2 = group["betas"]
            for ps, gs, ms, vs, steps in lists.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(
                    ps,
                    gs,
                    ms,
                    vs,
                    [],  # no AMSGrad
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                    grad_scale=None,
                    found_inf=None,
                )

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam.state_dict``'s layout: parameters numbered in group order."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            numbers = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": numbers})
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take a ``state_dict`` of this class or of ``torch.optim.Adam`` (copied, not shared).

        The settings of each group come from the file; how the update is computed (the flags)
        stays this optimizer's.
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        params = [p for g in self.param_groups for p in g["params"]]
        for saved, group in zip(groups, self.param_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict has a group of a different size")
            for key in ("lr", "eps", "weight_decay"):
                group[key] = saved[key]
            group["betas"] = tuple(saved["betas"])
        state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for number, values in state_dict["state"].items():
            p = params[int(number)]
            state[p] = {
                key: torch.as_tensor(value).to(
                    dtype=torch.float32 if key == "step" else p.dtype, device=p.device, copy=True
                )
                for key, value in values.items()
            }
        self.state = state


# What the training code accepts as its optimizer.
Optimizer: TypeAlias = "torch.optim.Optimizer | FusedAdam"
