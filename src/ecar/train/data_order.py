"""A resumable, rank-aware stream of batch indices.

The global stream is the concatenation of seeded permutations of the dataset, one per
epoch. Micro-batch k takes positions [k·m, (k+1)·m) of that stream, where m is the global
micro-batch size, and rank r takes its slice of it. The stream is a pure function of
(seed, k), so resuming at micro-batch k (= step · grad_accum) reproduces the data order
exactly, whatever the number of DataLoader workers and ranks.
"""

from __future__ import annotations

from typing import Iterator

import torch


class BatchStream:
    """Iterable of index lists for one rank, starting at global micro-batch ``start``."""

    def __init__(
        self, n: int, micro_global: int, seed: int, rank: int = 0, world: int = 1, start: int = 0
    ):
        if micro_global % world:
            raise ValueError(f"micro-batch {micro_global} is not divisible by {world} ranks")
        self.n, self.m, self.seed = n, micro_global, seed
        self.rank, self.world, self.start = rank, world, start
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def global_indices(self, k: int) -> list[int]:
        """Dataset indices of global micro-batch ``k`` (all ranks)."""
        out, pos, end = [], k * self.m, (k + 1) * self.m
        while pos < end:
            epoch, off = divmod(pos, self.n)
            take = min(end - pos, self.n - off)
            out.extend(self._permutation(epoch)[off : off + take].tolist())
            pos += take
        return out

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        per = self.m // self.world
        while True:
            idx = self.global_indices(k)
            yield idx[self.rank * per : (self.rank + 1) * per]
            k += 1
