"""Following the model when it changes after the pruner was built: :class:`ModelFollower`.

Users and frameworks change a model after building things on it: ``model.to(memory_format=
torch.channels_last)`` when tuning for speed, ``model.to(torch.bfloat16)`` or ``.half()``, a move
to the GPU (Lightning converts and moves the module after its ``setup`` hook). ``nn.Module.to``
keeps the same ``Parameter`` objects and replaces their data, so what the pruner holds (its
channel layout, whose table records each parameter's shape and strides, and the regularizer's
mask and strengths on the model's device) describes the old tensors.

The follower compares the parameters with the layout (:meth:`ChannelLayout.drift
<oneprune_ext.kernels.layout.ChannelLayout.drift>`) at the epoch hooks, and in the step hooks only
when a cheap sign says something changed (the armed channels compare one parameter's device with
theirs; a changed memory format is caught by the kernels' own shape and stride check, which
refuses before writing anything: :class:`~oneprune_ext.pruning.regularizers.ArmedChannels`).
Then it rebuilds the layout once, the pruner moves its device tensors, and the step runs again on
the rebuilt layout. What it cannot follow (a parameter replaced by another object,
or reshaped) is refused with a message that says what the user did and what to do.
"""

from __future__ import annotations

from ..kernels.layout import ChannelLayout, LayoutDrift

__all__ = ["ModelFollower"]


def _refusal(drift: LayoutDrift) -> ValueError:
    if drift.replaced:
        name = drift.replaced[0]
        more = f" (and {len(drift.replaced) - 1} more)" if len(drift.replaced) > 1 else ""
        return ValueError(
            f"parameter '{name}'{more} was replaced by another tensor object since the pruner was built "
            "(load_state_dict(..., assign=True), module.weight = nn.Parameter(...), a new submodule, or a wrapper "
            "that re-creates parameters). The pruner, like the optimizer, holds the original parameters, so "
            "training would go on without them. Load weights in place instead (load_state_dict(...) without "
            "assign=True, or param.data.copy_(...)), or build a new pruner and optimizer on the model as it is "
            "now; nothing was changed")
    name, built, now = drift.reshaped[0]
    more = f" (and {len(drift.reshaped) - 1} more)" if len(drift.reshaped) > 1 else ""
    return ValueError(
        f"parameter '{name}'{more} changed shape from {list(built)} to {list(now)} behind the pruner's back (another "
        "pruning tool, prune_channels, or weights of other shapes assigned to .data). Prune only through the "
        "pruner; on resume call pruner.load_state_dict(...) before model.load_state_dict(...) (it cuts the "
        "fresh dense model to the saved structure first); otherwise build a new pruner; nothing was changed")


class ModelFollower:
    """Keeps a pruner's channel layout in step with its model's parameters.

    Args:
        layout: the pruner's :class:`~oneprune_ext.kernels.layout.ChannelLayout` (its ``model``
            is the model followed).

    Attributes:
        rebuilds: how many times the layout was rebuilt to follow the model (not counting the
            prune's own rebuild).
    """

    def __init__(self, layout: ChannelLayout) -> None:
        self.layout = layout
        self.rebuilds = 0

    def check(self) -> bool:
        """The full check (epoch hooks): True when the layout was rebuilt for the model's new
        memory format, dtype or device; False when nothing changed.

        Raises:
            ValueError: a parameter was replaced or reshaped behind the pruner (the message says
                what happened and what to do); nothing is changed.
        """
        drift = self.layout.drift()
        if not drift:
            return False
        if not drift.followable:
            raise _refusal(drift)
        self.layout.follow()
        self.rebuilds += 1
        return True

