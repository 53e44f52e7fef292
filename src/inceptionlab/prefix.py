"""A model's forward as an ordered list of steps, and a prefix cache over them: branch ablation that re-runs the
network only from the earliest ablated block onward.

Every registered model runs its ``stage_names`` in order in eval mode; a stage that is an ``nn.Sequential`` is
expanded into its children, so every multi-branch (Inception) block is one step (``b3.0``). A
:class:`PrefixCache` keeps, for one batch, the input of each chosen block and its branch outputs; an ablation of
blocks ``{k, ...}`` then merges block ``k``'s cached branch outputs (the ablated ones replaced) and runs only the
steps after it. ``inceptionlab inspect`` (a batch of test images, every ablation of every block) and the explorer
(one image, a toggle at a time) both use it; the numbers equal a whole-network pass with the block's forward
replaced (``tests/test_prefix.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from inceptionlab.errors import ConfigError, InceptionLabError
from inceptionlab.models._blocks import MultiBranch, flatten_outputs

MODES = ("mean", "zero")
Replace = dict[int, Callable]  # branch index -> what that branch outputs instead (a function of its output)


def forward_steps(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's eval-mode forward as ``(module path, module)`` steps, in order; every multi-branch block is a
    step. A model whose blocks the steps do not reach is an error (it would be ablated wrongly)."""
    names = getattr(model, "stage_names", ())
    steps: list[tuple[str, nn.Module]] = []
    for stage in names:
        module = getattr(model, stage)
        children = list(module.named_children()) if isinstance(module, nn.Sequential) else []
        steps += [(f"{stage}.{child}", m) for child, m in children] if children else [(stage, module)]
    paths = {name for name, _ in steps}
    hidden = [n for n, m in model.named_modules() if isinstance(m, MultiBranch) and n not in paths]
    if not names or hidden:
        raise InceptionLabError(f"{type(model).__name__}: its forward is not a list of stages reaching every "
                                f"multi-branch block ({', '.join(hidden) or 'no stage_names'}); give it stage_names")
    return steps


def block_steps(steps: Sequence[tuple[str, nn.Module]]) -> dict[str, int]:
    """Each multi-branch block's step index, by module path, in forward order."""
    return {name: i for i, (name, module) in enumerate(steps) if isinstance(module, MultiBranch)}


def run_steps(steps: Sequence[tuple[str, nn.Module]], x: torch.Tensor, start: int = 0,
              forwards: dict[int, Callable] | None = None) -> torch.Tensor:
    """Steps ``start`` onward on ``x`` (what step ``start`` reads), ``forwards[i]`` in place of step ``i``."""
    forwards = forwards or {}
    for i in range(start, len(steps)):
        x = forwards[i](x) if i in forwards else steps[i][1](x)
    return x


# ------------------------------------------------------------------------------------ branches: record, replace


def branch_outputs(block: MultiBranch, x: torch.Tensor) -> list:
    return [branch(x) for branch in block.parallel_branches()]


def merge_replaced(block: MultiBranch, x: torch.Tensor, outputs: list, replace: Replace) -> torch.Tensor:
    """The block's output from its branch outputs, branch ``i``'s replaced by ``replace[i](output)``."""
    outputs = [replace[i](out) if i in replace else out for i, out in enumerate(outputs)]
    return block.merge(x, flatten_outputs(outputs))


def recording_forward(block: MultiBranch, record: Callable[[list], None], x: torch.Tensor) -> torch.Tensor:
    """``MultiBranch.forward`` that hands the branch outputs (one entry per branch) to ``record`` on the way."""
    outputs = branch_outputs(block, x)
    record(outputs)
    return block.merge(x, flatten_outputs(outputs))


def ablated_forward(block: MultiBranch, replace: Replace, x: torch.Tensor) -> torch.Tensor:
    """The block with branch ``i``'s output replaced by ``replace[i](output)``; the other branches as they are."""
    return merge_replaced(block, x, branch_outputs(block, x), replace)


def replacement(mode: str, means: list[torch.Tensor] | None = None) -> Callable:
    """What an ablated branch outputs instead: its per-channel test-set mean (``mode="mean"``) or zero."""
    if mode not in MODES:
        raise ConfigError(f"ablation mode must be one of {', '.join(MODES)}, got {mode!r}")

    def replace(out):
        tensors = flatten_outputs([out])
        if mode == "zero":
            return [torch.zeros_like(t) for t in tensors]
        return [m.to(t.device, t.dtype).view(1, -1, 1, 1).expand_as(t) for m, t in zip(means, tensors, strict=True)]

    return replace


# ------------------------------------------------------------------------------------------ the prefix cache


class PrefixCache:
    """One forward pass of a batch (already prepared: normalised, laid out, inside the caller's autocast) that
    keeps each ``keep`` block's input and branch outputs, so :meth:`logits` of an ablation runs only from the
    earliest ablated block onward."""

    def __init__(self, steps: Sequence[tuple[str, nn.Module]], x: torch.Tensor, keep: Sequence[int] | None = None):
        self.steps = steps
        keep = block_steps(steps).values() if keep is None else keep
        self.inputs: dict[int, torch.Tensor] = {}
        self.branches: dict[int, list] = {}
        self.base = run_steps(steps, x, 0, {i: functools.partial(self._record, i) for i in keep})

    def _record(self, i: int, x: torch.Tensor) -> torch.Tensor:
        self.inputs[i] = x
        return recording_forward(self.steps[i][1], functools.partial(self.branches.__setitem__, i), x)

    def logits(self, replaces: dict[int, Replace]) -> torch.Tensor:
        """The output with ``replaces[i]`` applied to block step ``i``'s branches (each a kept block)."""
        replaces = {i: r for i, r in replaces.items() if r}
        if not replaces:
            return self.base
        first = min(replaces)
        x = merge_replaced(self.steps[first][1], self.inputs[first], self.branches[first], replaces[first])
        later = {i: functools.partial(ablated_forward, self.steps[i][1], r) for i, r in replaces.items() if i > first}
        return run_steps(self.steps, x, first + 1, later)
