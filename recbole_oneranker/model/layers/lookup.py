"""Table lookups whose gradients are the same on every run."""

from __future__ import annotations

from torch import Tensor

__all__ = ["lookup"]


def lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]``: the rows of ``table`` (``[T, *row]``) at ``index`` (any shape), ``[*index.shape, *row]``.

    On a CPU, the backward of ``table[index]`` (``index_put_`` with accumulation) adds into the table atomically
    from several threads once the gathered tensor has 32,768 elements or more (a ``[B, N, N]`` time-bucket index, a
    ``[positions, negatives]`` batch of sampled items), so the float sums, and from them a whole training run,
    change from run to run. ``index_select`` sums with ``index_add_``, which is deterministic there, and is faster
    too, forward and backward on 2 threads: 27 against 41 ms for ``[512, 50, 50]`` indices into a 1-D table, 634
    against 724 ms for ``[6400, 128]`` indices into a ``[12101, 64]`` item table. On CUDA it is the other way round:
    ``index_add_`` adds atomically, while ``index_put_`` sorts the indices before summing, so indexing stays.
    """
    if table.device.type != "cpu":
        return table[index]
    return table.index_select(0, index.reshape(-1)).view(*index.shape, *table.shape[1:])
