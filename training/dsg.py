"""Dynamic stop-and-go (paper Sec. 3, Algorithm 1), with the reference controller's semantics.

One controller per task, fed the task's validation score (higher is better) once per task epoch;
the reference's `MultiTaskStopOnPlateau` update, checked in this order:

1. a score above best x (1 + threshold) becomes the new best; otherwise one more bad evaluation;
2. during cooldown the bad count is forgiven;
3. more than `patience` bad evaluations in a row -> **stop** (train only every `iter_gap` iterations);
4. otherwise, while stopped, a score below best x (1 - continue_threshold) -> **go** again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class StopAndGo:
    threshold: float = 0.001  # relative gain that counts as an improvement (0.1 %)
    continue_threshold: float = 0.005  # relative drop below best that sends a stopped task back (0.5 %)
    patience: int = 1  # bad evaluations tolerated; the (patience+1)-th in a row stops the task
    cooldown: int = 1  # evaluations after a switch whose bad count is forgiven
    best: float = -math.inf
    num_bad: int = 0
    cooldown_counter: int = 0
    in_stop: bool = False

    def step(self, score: float) -> bool:
        """Feed one validation score; returns True when the mode changed."""
        before = self.in_stop
        if score > self.best * (1.0 + self.threshold) or self.best == -math.inf:
            self.best, self.num_bad = score, 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.in_stop, self.cooldown_counter, self.num_bad = True, self.cooldown, 0
        elif self.in_stop and score < self.best * (1.0 - self.continue_threshold):
            self.in_stop, self.cooldown_counter, self.num_bad = False, self.cooldown, 0
        return before != self.in_stop

    def reset(self) -> None:
        """Forget the history (the reference resets every controller at the end of epochs 5 and 7)."""
        self.best, self.num_bad, self.cooldown_counter, self.in_stop = -math.inf, 0, 0, False

    def state_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, float | int | bool]) -> None:
        for key, value in state.items():
            setattr(self, key, type(getattr(self, key))(value))
