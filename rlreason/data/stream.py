"""The training data cursor: a seeded shuffle per epoch and a position in it.

Its whole state is (epoch, position), so a checkpoint resumes on exactly the prompt the
stopped run would have taken next.
"""
from __future__ import annotations

import random

from ..types import Problem


class ProblemStream:
    def __init__(self, problems: list[Problem], seed: int):
        if not problems:
            raise ValueError("data: no training problems (check data.source and data.limit)")
        self.problems = problems
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def take(self, k: int) -> list[Problem]:
        """The next `k` problems; a new epoch reshuffles."""
        out = []
        while len(out) < k:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            out.append(self.problems[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffled(self.epoch)
