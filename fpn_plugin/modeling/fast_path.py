"""The fast path: the backbone (bottom-up and neck) run in channels-last memory format and/or
under autocast, switched on from outside the modules' forward by forward hooks, so the default
path and the fast path run the same forward and keep the same parameter names.

Not in the paper; off by default (``MODEL.FPN_PAPER.FAST.*``). The pyramid maps leave the
backbone in fp32 either way, so the RPN, the heads and every caller see the same types.
"""
from typing import Dict

import torch
from torch import nn

__all__ = ["AUTOCAST_DTYPES", "enable_fast_path"]

#: Values of MODEL.FPN_PAPER.FAST.AUTOCAST and the dtypes they mean.
AUTOCAST_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _FastPathHooks:
    """A forward pre-hook that lays the input out channels-last and enters autocast, and a
    forward hook (called also when the forward raises) that leaves it and returns fp32 maps."""

    def __init__(self, channels_last: bool, dtype):
        self.channels_last = channels_last
        self.dtype = dtype
        self._contexts = []  # one per forward in flight (a stack: forwards may nest)

    def enter(self, module, args):
        x = args[0]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is not None:
            context = torch.autocast(device_type=x.device.type, dtype=self.dtype)
            context.__enter__()
            self._contexts.append(context)
        return (x,) + tuple(args[1:])

    def leave(self, module, args, output: Dict[str, torch.Tensor]):
        if self.dtype is None:
            return output
        self._contexts.pop().__exit__(None, None, None)
        return None if output is None else {k: v.float() for k, v in output.items()}


def enable_fast_path(backbone: nn.Module, channels_last: bool = False, autocast: str = "") -> nn.Module:
    """Switch ``backbone`` (a Backbone taking (N, 3, H, W) images and returning a dict of maps)
    to the fast path, in place: its weights in channels-last format when ``channels_last``, its
    forward under autocast to ``autocast`` ("bf16", "fp16"; "" for fp32). Returns ``backbone``.
    ``autocast`` must be a key of :data:`AUTOCAST_DTYPES` (checked where the config is read)."""
    dtype = AUTOCAST_DTYPES[autocast]
    if not channels_last and dtype is None:
        return backbone
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    hooks = _FastPathHooks(channels_last, dtype)
    backbone.register_forward_pre_hook(hooks.enter)
    backbone.register_forward_hook(hooks.leave, always_call=True)
    backbone.fast_path = {"channels_last": channels_last, "autocast": autocast}
    return backbone
