"""keep=auto: the final weights unless clearly worse on validation than an earlier stretch of
rounds (unet.training.keeping), on hand-made validation curves; round e's weights are {"round":
e}."""
import pytest

from unet.training.keeping import MAX_TOLERANCE, SteadyRounds


def rounds_of(dice: list[float]) -> SteadyRounds:
    rounds = SteadyRounds()
    for epoch, value in enumerate(dice, start=1):
        rounds.track(value, {"round": epoch})
    return rounds


def test_the_final_weights_stay_within_the_rounds_noise():
    # A plateau with noise ~0.004 and a final round 0.003 below the best stretch: final.
    rounds = rounds_of([0.80, 0.90, 0.95, 0.955, 0.951, 0.956, 0.952, 0.955, 0.951, 0.953])
    # second half: 0.956, 0.952, 0.955, 0.951, 0.953 -> changes .004 .003 .004 .002 -> median
    assert rounds.tolerance() == pytest.approx(0.004)
    epoch, dice, weights, why = rounds.settle()
    assert (epoch, dice, weights) == (10, 0.953, None) and why.startswith("the final weights")


def test_an_overfit_folder_goes_back_to_its_steadiest_rounds():
    # The folder: val Dice peaks mid-run and falls by 0.08 while the train loss falls.
    dice = [0.70, 0.85, 0.91, 0.92, 0.925, 0.92, 0.90, 0.89, 0.88, 0.87, 0.86, 0.855, 0.85,
            0.848, 0.847]
    rounds = rounds_of(dice)
    # steady means: round 5 = (0.92 + 0.925 + 0.92) / 3 = 0.9217, the best stretch
    assert rounds.steady[0] == 5 and rounds.steady[1] == pytest.approx(0.92167, abs=1e-5)
    epoch, kept, weights, why = rounds.settle()
    assert (epoch, kept, weights) == (5, 0.925, {"round": 5}) and "round 5's weights" in why
    assert max(dice) - kept <= MAX_TOLERANCE


def test_a_lucky_single_round_is_ignored():
    # Round 4 jumps 0.04 above rounds that otherwise climb to the final one. Alone it would
    # be the best round by 0.026; the 3-round means around it (0.9333 for round 4, 0.935 for
    # round 5) are within the late rounds' noise (0.002) of the final 0.934: final weights.
    rounds = rounds_of([0.90, 0.91, 0.92, 0.96, 0.92, 0.925, 0.93, 0.932, 0.933, 0.934])
    assert rounds.settle()[:3] == (10, 0.934, None)


def test_the_rounds_survive_a_checkpoint():
    dice = [0.70, 0.85, 0.91, 0.92, 0.925, 0.92, 0.90, 0.89]
    again = SteadyRounds.from_state(rounds_of(dice).state())
    assert again.history == dice and again.settle()[:3] == (5, 0.925, {"round": 5})
    # a checkpoint of before keep=auto: no history, the rounds start at the resumed one
    assert SteadyRounds.from_state({}).history == []
