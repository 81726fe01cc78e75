"""Batches of examples in shuffled epochs, resumable exactly."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class EpochBatches:
    """``batch_size`` items at a time from shuffled passes over ``items``, passed through
    ``collate``. The shuffle generator, the current order and the position are the state.

    With ``length`` and ``window`` > 1, each pass groups items of similar length: the
    shuffled order is cut into windows of ``window`` batches, each window sorted by
    ``length``, and the resulting batches shuffled again. Padded batches then waste far
    less (built-in demonstrations: 52% of the positions, padding 63% -> 29%) while every
    item is still seen once a pass, in an order that changes every pass."""

    def __init__(self, items: list, batch_size: int, seed: int,
                 collate: Callable[[list], object] = list,
                 length: Callable[[object], int] | None = None, window: int = 1):
        self.items, self.batch_size, self.collate = items, batch_size, collate
        self.length, self.window = length, window
        self.gen = torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.pos = 0

    def _new_order(self) -> list[int]:
        order = torch.randperm(len(self.items), generator=self.gen).tolist()
        if self.length is None or self.window <= 1:
            return order
        size, batches = self.batch_size * self.window, []
        for start in range(0, len(order), size):
            chunk = sorted(order[start:start + size], key=lambda i: self.length(self.items[i]))
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk),
                                                                     self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=self.gen).tolist()
        return [i for b in shuffled for i in batches[b]]

    def next(self):
        chosen = []
        while len(chosen) < self.batch_size:
            if self.pos >= len(self.order):
                self.order = self._new_order()
                self.pos = 0
            chosen.append(self.items[self.order[self.pos]])
            self.pos += 1
        return self.collate(chosen)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.order, self.pos = state["order"], state["pos"]


def share(batch, rank: int, world: int):
    """Rank ``rank``'s contiguous share of a global batch (a list, a tensor, or a tuple of
    them split alike): rank after rank, the shares are the batch."""
    if isinstance(batch, tuple):
        return tuple(share(b, rank, world) for b in batch)
    n = len(batch) // world
    return batch[rank * n:(rank + 1) * n]


class RankShare:
    """This rank's share of each global batch of ``batches`` (under torchrun). Every rank
    draws the same global batch, so the data position is one state whatever the number of
    ranks: a checkpoint made on N of them resumes on M."""

    def __init__(self, batches):
        from gptsmith.train.distributed import rank, world

        self.batches, self.rank, self.world = batches, rank(), world()

    def next(self):
        return share(self.batches.next(), self.rank, self.world)

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


class Zipped:
    """Several batch streams drawn together: ``next`` is the tuple of each one's next batch,
    and the state is theirs, so a checkpoint resumes every stream where it was."""

    def __init__(self, *streams):
        self.streams = streams

    def next(self):
        return tuple(s.next() for s in self.streams)

    def state_dict(self) -> dict:
        return {"streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        for s, st in zip(self.streams, state["streams"], strict=True):
            s.load_state_dict(st)


def first_fit(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` packed into rows holding at most ``width`` each: longest first,
    each into the first row with room (first-fit decreasing; ties keep their order)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(room) if left >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(width)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows


def right_padded(seqs: Sequence[Sequence[int]], fill: int, width: int = 0) -> torch.Tensor:
    """Sequences left-aligned in one (B, width) tensor, ``fill`` after each (width 0: the
    longest). The one place training pads; the engine left-pads (``engine.left_padded``)."""
    width = width or max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
