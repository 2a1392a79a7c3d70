"""Named parameter arrays that are views into one flat vector."""
from __future__ import annotations

import math
from collections.abc import Mapping

from minivae._types import Array


class Parameters(dict):
    """``{name: array}`` whose arrays are views into the contiguous vector ``self.flat``.

    Writing into ``params[name]`` (in place) writes into ``flat`` and vice versa, so a whole-model
    operation (an optimizer step, a checkpoint, a random direction for a gradient check) is one
    vector operation.
    """

    def __init__(self, flat: Array, shapes: Mapping[str, tuple[int, ...]]) -> None:
        views, offset = {}, 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            views[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        if offset != flat.size:
            raise ValueError(f"flat vector has {flat.size} entries, the shapes need {offset}")
        super().__init__(views)
        self.flat = flat
        self.shapes = dict(shapes)

    def range(self, prefix: str) -> tuple[int, int]:
        """(lo, hi): the entries of ``flat`` that hold the parameters named ``{prefix}.*`` (they
        must be consecutive, as a network's parameters are)."""
        spans, offset = [], 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            if name.startswith(prefix + "."):
                spans.append((offset, offset + size))
            offset += size
        if not spans:
            raise KeyError(f"no parameters named {prefix}.*")
        if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
            raise ValueError(f"the parameters named {prefix}.* are not consecutive")
        return spans[0][0], spans[-1][1]


def flat_views(vector: Array, like: Mapping[str, Array]) -> Parameters:
    """Views into ``vector`` with the names and shapes of the arrays in ``like`` (a dict)."""
    return Parameters(vector, {name: tuple(array.shape) for name, array in like.items()})
