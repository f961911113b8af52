
import pytest
import torch

from unet.errors import UserError
from unet.network.model import UNet
from unet.network.precision import choose_precision
from unet.training import batchnorm, checkpoint, engine
from unet.training.losses import make_loss, soft_dice_loss
from unet.training.schedule import EpochSampler, Schedule, lr_factor


def toy_loader(n=32, seed=0):
    """Images whose first channel is bright where the mask is 1: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 16, 16, generator=g) > 0.5).float()
    images = torch.rand(n, 3, 16, 16, generator=g) * 0.3
    images[:, 0] += masks * 0.7
    return torch.utils.data.DataLoader(list(zip(images, masks)), batch_size=8)


def test_precision_choice():
    fp32 = choose_precision("fp32", "cpu")
    assert fp32.autocast is None and fp32.name == "fp32" and not fp32.grad_scaler
    assert choose_precision("bf16", "cpu").autocast is torch.bfloat16
    with pytest.raises(UserError, match="precision=fp16 needs a CUDA GPU"):
        choose_precision("fp16", "cpu")


def test_training_learns_and_resumes_with_the_same_state(tmp_path):
    torch.manual_seed(0)
    precision = choose_precision("fp32", "cpu")
    loader = toy_loader()
    schedule = Schedule(lr=2e-2, epochs=8, steps_per_epoch=4, warmup_steps=2)
    trainer = engine.Trainer(UNet(features=(4, 8)), schedule, precision, tmp_path / "last.pt")
    results = []
    fit = trainer.fit(loader, loader)
    results.append(next(fit))
    results.append(next(fit))          # stop after epoch 2 of 8, as a killed run would
    assert [r.epoch for r in results] == [1, 2]
    assert results[1].train["loss"] < results[0].train["loss"]

    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["best_dice"] == trainer.best_dice
    resumed = engine.Trainer(UNet(features=(4, 8)), schedule, precision, tmp_path / "resumed.pt")
    resumed.load_state(state)
    assert resumed.epoch == 2
    assert resumed.scheduler.get_last_lr() == trainer.scheduler.get_last_lr()
    for a, b in zip(resumed.optimizer.state_dict()["state"].values(),
                    trainer.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])
    rest = list(resumed.fit(loader, loader))
    assert [r.epoch for r in rest] == [3, 4, 5, 6, 7, 8]
    assert rest[-1].val["dice"] > 0.8


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"epoch": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temp file left


def test_resuming_another_architecture_is_a_clear_error(tmp_path):
    precision = choose_precision("fp32", "cpu")
    schedule = Schedule(lr=1e-3, epochs=1, steps_per_epoch=1)
    small = engine.Trainer(UNet(features=(4, 8)), schedule, precision, tmp_path / "a.pt")
    other = engine.Trainer(UNet(features=(8, 16)), schedule, precision, tmp_path / "b.pt")
    with pytest.raises(UserError, match="another architecture"):
        other.load_state(small.state())


def test_lr_warms_up_linearly_then_follows_the_cosine_to_zero():
    factors = [lr_factor(step, 10, 4, "cosine") for step in range(11)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up: 0.5 (1 + cos(pi (step - 4) / 6))
    assert factors[4] == 1.0 and factors[7] == pytest.approx(0.5) and factors[10] == pytest.approx(0)
    assert [lr_factor(s, 10, 2, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]


def test_epoch_sampler_sees_every_image_before_repeating_and_shares_out_processes():
    small = EpochSampler(size=5, samples=8, seed=0)
    small.set_epoch(1)
    first = list(small)
    assert len(first) == 8 and sorted(first[:5]) == [0, 1, 2, 3, 4]   # a whole pass first
    large = EpochSampler(size=10, samples=4, seed=0)
    seen = []
    for epoch in (1, 2, 3):                       # 12 samples: one pass, then a new one
        large.set_epoch(epoch)
        seen += list(large)
    assert sorted(seen[:10]) == list(range(10)) and len(set(seen[10:])) == 2
    shares = []
    for rank in (0, 1):
        part = EpochSampler(size=5, samples=8, seed=0, rank=rank, world_size=2)
        part.set_epoch(1)
        shares.append(list(part))
    assert shares[0] == first[0::2] and shares[1] == first[1::2] and len(shares[0]) == 4


def test_soft_dice_loss_by_hand():
    # one image of 4 pixels: truth [1, 1, 0, 0], probabilities [1, 0.5, 0.5, 0] (logits inf/0)
    logits = torch.tensor([[[[100.0, 0.0], [0.0, -100.0]]]])
    masks = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    # overlap 1.5, sum p 2, sum t 2: 1 - (2 * 1.5 + 1) / (4 + 1) = 0.2
    assert soft_dice_loss(logits, masks).item() == pytest.approx(0.2)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
    assert make_loss("bce_dice")(logits, masks).item() == pytest.approx(bce.item() + 0.2)
    assert make_loss("bce")(logits, masks).item() == pytest.approx(bce.item())


def test_bn_recalibration_equals_the_statistics_computed_on_the_same_batches():
    torch.manual_seed(0)
    model = UNet(features=(4, 8))
    precision = choose_precision("fp32", "cpu")
    model.train()
    for _ in range(3):                   # running averages that lag behind, as after training
        model(torch.rand(2, 3, 16, 16) * 5)
    batches = [torch.rand(4, 3, 16, 16) for _ in range(3)]
    assert batchnorm.recalibrate(model, batches, precision) == 12
    assert not model.training
    first_conv, first_bn = model.downs[0][0], model.downs[0][1]
    with torch.no_grad():
        outputs = [first_conv(b) for b in batches]           # what the first BN layer saw
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outputs]).mean(0)
    assert torch.allclose(first_bn.running_mean, mean, atol=1e-6)
    assert torch.allclose(first_bn.running_var, var, atol=1e-6)
    assert first_bn.momentum == 0.1                          # training goes on as before


def test_early_stopping_waits_until_the_lr_has_annealed_to_half_its_peak(tmp_path):
    precision = choose_precision("fp32", "cpu")
    loader = toy_loader()
    # lr ~0: the weights never change, so the Dice of round 1 is never beaten. Cosine over
    # 10 rounds x 4 steps: after round e the lr is 0.5 (1 + cos(pi 4e / 40)) of its peak:
    # 0.976, 0.905, 0.794, 0.655 (> 1/2: patience 2 is used up, but no stop), then 0.5.
    schedule = Schedule(lr=1e-12, epochs=10, steps_per_epoch=4, patience=2)
    assert [schedule.may_stop(4 * e) for e in range(1, 7)] == [False] * 4 + [True] * 2
    trainer = engine.Trainer(UNet(features=(4, 8)), schedule, precision, tmp_path / "last.pt")
    epochs = [r.epoch for r in trainer.fit(loader, loader)]
    assert epochs == [1, 2, 3, 4, 5] and trainer.stopped_early and trainer.best_epoch == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["stopped_early"] is True
    # A constant lr never anneals: the patience applies as it is.
    constant = Schedule(lr=1e-12, epochs=10, steps_per_epoch=4, patience=2,
                        lr_schedule="constant")
    trainer = engine.Trainer(UNet(features=(4, 8)), constant, precision, tmp_path / "c.pt")
    assert [r.epoch for r in trainer.fit(loader, loader)] == [1, 2, 3]


def test_the_weight_average_follows_the_rule_on_a_toy_sequence():
    from unet.training.averaging import WeightAverage, decay_of
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, horizon_steps=4)          # decay 0.75
    assert decay_of(4) == 0.75 and decay_of(0) == 0.0
    expected = 0.0
    for n, w in enumerate([8.0, 4.0, 0.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0], start=1):
        with torch.no_grad():
            model.weight.fill_(w)
        average.update(model)
        decay = min(0.75, (1 + n) / (10 + n))     # 2/11, 3/12, 4/13, 5/14, 6/15, then 0.75
        expected = decay * expected + (1 - decay) * w
        assert average.model.weight.item() == pytest.approx(expected, rel=1e-6)
    # by hand for the first two: 9/11 * 8 = 6.545..., then 3/12 * 6.545 + 9/12 * 4 = 4.636...
    first = 9 / 11 * 8
    assert 3 / 12 * first + 9 / 12 * 4 == pytest.approx(4.6364, abs=1e-4)


def test_keep_final_logs_the_last_round_and_keep_best_the_best_one(tmp_path):
    precision = choose_precision("fp32", "cpu")
    loader = toy_loader()
    results = {}
    for keep in ("final", "best"):
        torch.manual_seed(0)
        schedule = Schedule(lr=2e-2, epochs=4, steps_per_epoch=4)
        trainer = engine.Trainer(UNet(features=(4, 8)), schedule, precision,
                                 tmp_path / f"{keep}.pt", average_steps=5, keep=keep)
        rounds = list(trainer.fit(loader, loader))
        dice = [r.val["dice"] for r in rounds]
        results[keep] = (trainer, dice)
        evaluated = trainer.evaluated.state_dict()
        if keep == "final":
            assert trainer.kept_epoch == 4 and trainer.kept_dice == dice[-1]
            assert all(torch.equal(evaluated[k], v) for k, v in trainer.kept_state.items())
        else:
            assert trainer.kept_epoch == 1 + dice.index(max(dice))
            assert trainer.kept_dice == max(dice) == trainer.best_dice
    # The validated weights are the average, not the trained ones.
    trainer = results["final"][0]
    assert not torch.equal(trainer.model.head.weight, trainer.average.model.head.weight)



def test_keep_auto_through_fit_says_which_weights_and_checkpoints_its_rounds(tmp_path):
    precision = choose_precision("fp32", "cpu")
    torch.manual_seed(0)
    trainer = engine.Trainer(UNet(features=(4, 8)), Schedule(lr=2e-2, epochs=4,
                                                              steps_per_epoch=4),
                             precision, tmp_path / "auto.pt", average_steps=5, keep="auto")
    dice = [r.val["dice"] for r in trainer.fit(toy_loader(), toy_loader())]
    assert trainer.rounds.history == dice and trainer.kept_reason
    assert trainer.kept_dice == dice[trainer.kept_epoch - 1]
    saved = torch.load(tmp_path / "auto.pt", weights_only=True)
    assert saved["history"] == dice and saved["steady"][0] in (1, 2, 3)
