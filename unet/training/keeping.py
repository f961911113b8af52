"""Which weights a run keeps under keep=auto: the end of the schedule, unless a small folder
was overfit and an earlier stretch of rounds was clearly better on validation.

The validation Dice of one round is noisy (a few images, one lucky batch of augmentation before
it), so a single best round overstates its weights. A round's *steady* Dice is the mean of its
Dice and its neighbours' (the last round: with the one before). The rounds' *noise* is the
median change of Dice from one round to the next over the second half of the run (the lr is
low there, so the changes are mostly noise), at most MAX_TOLERANCE. The final weights stay
unless their Dice is below the best steady Dice of an earlier round by more than the noise;
then that round's weights are kept: never clearly worse on validation than an earlier stretch
of rounds, at most MAX_TOLERANCE below it, and a lucky single round is diluted by its
neighbours. Knows nothing of MLflow (unet.training.engine.Trainer calls it after every round).
"""
from __future__ import annotations

import copy
import dataclasses

MAX_TOLERANCE = 0.01


@dataclasses.dataclass
class SteadyRounds:
    """The val Dice of every round so far, the previous round's weights, and the round of the
    best steady Dice with its weights (state dicts of the validated model)."""
    history: list[float] = dataclasses.field(default_factory=list)
    previous: dict | None = None
    steady: tuple[int, float, dict | None] = (0, -1.0, None)     # epoch, mean, weights

    def track(self, dice: float, weights: dict) -> None:
        """After round len(history) + 1, validated at `dice` with `weights`: the steady Dice of
        the round before is known now (its neighbours are); remember that round's weights if
        it is the steadiest yet."""
        self.history.append(dice)
        if len(self.history) >= 2:
            epoch = len(self.history) - 1
            window = self.history[max(0, epoch - 2):epoch + 1]
            mean = sum(window) / len(window)
            if mean > self.steady[1]:
                self.steady = (epoch, mean, self.previous)
        self.previous = copy.deepcopy(weights)

    def tolerance(self) -> float:
        """The rounds' noise (module docstring), at most MAX_TOLERANCE."""
        late = self.history[len(self.history) // 2:]
        changes = sorted(abs(b - a) for a, b in zip(late, late[1:]))
        noise = changes[len(changes) // 2] if changes else 0.0
        return min(noise, MAX_TOLERANCE)

    def settle(self) -> tuple[int, float, dict | None, str]:
        """(epoch, its val Dice, its weights, why) of the weights to keep; weights None: the
        final ones."""
        final = self.history[-1]
        last_mean = sum(self.history[-2:]) / len(self.history[-2:])
        epoch, mean, weights = self.steady
        tolerance = self.tolerance()
        if weights is None or mean <= last_mean or final >= mean - tolerance:
            return (len(self.history), final, None,
                    f"the final weights (round {len(self.history)}, val Dice {final:.4f}): no "
                    f"earlier stretch of rounds was better by more than the rounds' noise "
                    f"({tolerance:.4f})")
        dice = self.history[epoch - 1]
        return (epoch, dice, weights,
                f"round {epoch}'s weights (val Dice {dice:.4f}, {mean:.4f} with its "
                f"neighbours): the final round's {final:.4f} fell below by more than the "
                f"rounds' noise ({tolerance:.4f}), as when a small folder is overfit")

    def state(self) -> dict:
        return {"history": self.history, "previous_model": self.previous,
                "steady": self.steady}

    @classmethod
    def from_state(cls, state: dict) -> "SteadyRounds":
        """From a checkpoint (one of before keep=auto has none: the history starts at the
        resumed round)."""
        return cls(list(state.get("history", [])), state.get("previous_model"),
                   tuple(state.get("steady", (0, -1.0, None))))
