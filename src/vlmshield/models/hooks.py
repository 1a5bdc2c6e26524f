"""Forward hooks on decoder layers, as context managers that always clean up.

Decoder layers in transformers 5 return a plain tensor; older ones a tuple whose first item is the
hidden states. Both are handled here so callers only see ``[batch, seq, hidden]`` tensors.

Example:
    >>> with edit_layer_outputs(layers[3], lambda h: h + v):  # doctest: +SKIP
    ...     vlm.generate([conv])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

HiddenFn = Callable[[torch.Tensor], torch.Tensor]

#: How many :func:`edit_layer_outputs` blocks are active on each layer (keyed by ``id(layer)``).
_EDITS: dict[int, int] = {}


def is_edited(layer: nn.Module) -> bool:
    """Whether an :func:`edit_layer_outputs` block is changing ``layer``'s outputs right now (steering
    defenses; transformers' own output-recording hooks do not count)."""
    return _EDITS.get(id(layer), 0) > 0


def _hidden_of(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def edit_layer_outputs(layer: nn.Module, fn: HiddenFn) -> Iterator[None]:
    """Replace ``layer``'s output hidden states ``h`` by ``fn(h)`` inside the ``with`` block.

    ``fn`` must not modify ``h`` in place. The hook is removed on exit, even after an exception.
    """

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        return _replace_hidden(output, fn(_hidden_of(output)))

    handle = layer.register_forward_hook(hook)
    _EDITS[id(layer)] = _EDITS.get(id(layer), 0) + 1
    try:
        yield
    finally:
        handle.remove()
        _EDITS[id(layer)] -= 1
        if not _EDITS[id(layer)]:
            del _EDITS[id(layer)]


@contextmanager
def capture_layer_outputs(
    layers: Sequence[nn.Module], select: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> Iterator[list[list[torch.Tensor]]]:
    """Record each layer's output (optionally ``select``-ed, e.g. the last position) on every call.

    Yields a list with one list per layer; each forward call appends one detached tensor.
    """
    records: list[list[torch.Tensor]] = [[] for _ in layers]

    def make_hook(i: int) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            h = _hidden_of(output)
            records[i].append((select(h) if select else h).detach())

        return hook

    with ExitStack() as stack:
        for i, layer in enumerate(layers):
            stack.callback(layer.register_forward_hook(make_hook(i)).remove)
        yield records
