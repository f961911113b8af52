import pytest
import torch

from unet import engine
from unet.errors import UserError
from unet.model import UNet


def toy_loader(n=32, seed=0):
    """Images whose first channel is bright where the mask is 1: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    masks = (torch.rand(n, 16, 16, generator=g) > 0.5).float()
    images = torch.rand(n, 3, 16, 16, generator=g) * 0.3
    images[:, 0] += masks * 0.7
    return torch.utils.data.DataLoader(list(zip(images, masks)), batch_size=8)


def test_precision_choice():
    fp32 = engine.choose_precision("fp32", "cpu")
    assert fp32.autocast is None and fp32.name == "fp32" and not fp32.grad_scaler
    assert engine.choose_precision("bf16", "cpu").autocast is torch.bfloat16
    with pytest.raises(UserError, match="precision=fp16 needs a CUDA GPU"):
        engine.choose_precision("fp16", "cpu")


def test_training_learns_and_resumes_with_the_same_state(tmp_path):
    torch.manual_seed(0)
    precision = engine.choose_precision("fp32", "cpu")
    loader = toy_loader()
    trainer = engine.Trainer(UNet(features=(4, 8)), 1e-2, 8, precision, tmp_path / "last.pt")
    results = []
    fit = trainer.fit(loader, loader)
    results.append(next(fit))
    results.append(next(fit))          # stop after epoch 2 of 8, as a killed run would
    assert [r.epoch for r in results] == [1, 2]
    assert results[1].train["loss"] < results[0].train["loss"]

    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["best_dice"] == trainer.best_dice
    resumed = engine.Trainer(UNet(features=(4, 8)), 1e-2, 8, precision, tmp_path / "resumed.pt")
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
    engine.save_checkpoint({"epoch": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        engine.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]   # no temp file left


def test_resuming_another_architecture_is_a_clear_error(tmp_path):
    precision = engine.choose_precision("fp32", "cpu")
    small = engine.Trainer(UNet(features=(4, 8)), 1e-3, 1, precision, tmp_path / "a.pt")
    other = engine.Trainer(UNet(features=(8, 16)), 1e-3, 1, precision, tmp_path / "b.pt")
    with pytest.raises(UserError, match="another architecture"):
        other.load_state(small.state())
