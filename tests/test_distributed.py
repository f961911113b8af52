"""Training in 2 CPU processes: DistributedDataParallel under torchrun (gloo), logged once."""
from __future__ import annotations

import json
import sys

import mlflow
import numpy as np
import torch
from conftest import TINY, free_port, mlflow_run, only
from mlflow.tracking import MlflowClient

from unet.data.check import validate_folder
from unet.data.pairs import SegmentationDataset
from unet.data.synthetic import generate
from unet.images import transforms
from unet.network.model import UNet
from unet.network.precision import choose_precision, prepare
from unet.tracking.serving import decode_mask
from unet.training import distributed, engine


def all_runs():
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_two_processes_log_one_run_and_reach_the_dice_of_one(tracking_uri, monkeypatch):
    result = mlflow_run("split_data", only(TINY, "split_data"), tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    (split,) = all_runs()
    # fp32: the same arithmetic on any CPU; 4 epochs: past the first noisy steps
    settings = {**only(TINY, "train"), "split_run_id": split.info.run_id, "epochs": "4",
                "precision": "fp32"}

    result = mlflow_run("train", {**settings, "nproc": "2"}, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = all_runs()
    assert len(runs) == 2                      # the split and one train run: rank 1 made none
    two = next(r for r in runs if r.info.run_id != split.info.run_id)
    assert two.info.status == "FINISHED"
    assert two.data.params["nproc"] == "2" and two.data.tags["world_size"] == "2"
    history = MlflowClient().get_metric_history(two.info.run_id, "val_dice")
    assert [m.step for m in history] == [1, 2, 3, 4]      # one value per epoch: rank 0's
    assert result.stdout.count("epoch 4/4") == 1          # only rank 0 prints
    assert [f.path for f in MlflowClient().list_artifacts(two.info.run_id, "checkpoints")] \
        == ["checkpoints/last.pt"]

    # the model rank 0 logged registers and segments
    version = mlflow.register_model(two.data.tags["model_uri"], "unet-ddp")
    # load_model puts the model's copy of unet first on sys.path; processes spawned by later
    # tests inherit sys.path, so it is restored after this test
    monkeypatch.setattr(sys, "path", list(sys.path))
    model = mlflow.pyfunc.load_model(f"models:/unet-ddp/{version.version}")
    out = model.predict({"image": [np.zeros((40, 56, 3), np.uint8)] * 2})
    assert [decode_mask(png).shape for png in out["mask"]] == [(40, 56)] * 2

    result = mlflow_run("train", {**settings, "nproc": "1"}, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    one = next(r for r in all_runs() if r.data.params.get("nproc") == "1")
    assert abs(two.data.metrics["best_val_dice"] - one.data.metrics["best_val_dice"]) < 0.05


def _validate_share(rank: int, port: int, data_dir: str, out: str) -> None:
    """One of 2 gloo processes: validates its share of the set; rank 0 writes the result."""
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init("cpu")
    try:
        result = _validate_full_set(data_dir, distributed.shard)
        if distributed.is_main():
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        distributed.finish()


def _validate_full_set(data_dir: str, shard=lambda dataset: dataset) -> dict[str, float]:
    """validate() of a seeded untrained U-Net on the 5 images in data_dir (or a shard)."""
    from pathlib import Path
    pairs = validate_folder(Path(data_dir) / "train", Path(data_dir) / "train_masks").pairs
    dataset = SegmentationDataset(pairs, (32, 48), transforms.eval_transform())
    precision = choose_precision("fp32", "cpu")
    torch.manual_seed(0)
    model = prepare(UNet(features=(4, 8, 16, 32)), precision)
    loader = engine.make_loader(shard(dataset), 2, 0, 0, precision)
    result = engine.validate(model, loader, torch.nn.BCEWithLogitsLoss(), precision)
    result.pop("images_per_second")
    return result


def test_validation_over_shards_equals_validation_in_one_process(tmp_path):
    """5 images in 2 shares (3 + 2): the gathered counts and summed losses give the
    one-process metrics exactly, no image counted twice."""
    generate(tmp_path, 5, 48, 72, seed=3)
    out = tmp_path / "result.json"
    torch.multiprocessing.spawn(_validate_share, args=(free_port(), str(tmp_path), str(out)),
                                nprocs=2)
    sharded = json.loads(out.read_text())
    whole = _validate_full_set(str(tmp_path))
    assert sharded.keys() == whole.keys()
    for name, value in whole.items():
        assert abs(sharded[name] - value) < 1e-6, name
