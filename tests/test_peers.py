"""tools/peers without the peers: the nnU-Net and YOLO datasets made from a split, the one
scorer against Dice computed by hand, and the table; nnunetv2 and ultralytics are imported by
neither the pipeline nor the tool's modules."""
import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from tools.peers import nnunet, yolo
from tools.peers.scoring import BadPrediction, score
from unet.data.pairs import Pair
from unet.data.synthetic import generate
from unet.images.formats import read_deep
from unet.images.intensity import measure, to_rgb8
from unet.images.reading import load_image
from unet.labels.classes import Classes, reader
from unet.labels.masks import VOID
from unet.tracking.splits import Split

ROOT = Path(__file__).resolve().parent.parent
BINARY = Classes.numbered(2)


def synthetic_split(tmp_path) -> Split:
    """12 generated cars, 6 train, 3 val, 3 test; one stem holds characters nnU-Net refuses."""
    stems = generate(tmp_path, 12, 48, 72, seed=3)
    odd = "car one+1"
    shutil.copy(tmp_path / "train" / f"{stems[0]}.jpg", tmp_path / "train" / f"{odd}.jpg")
    shutil.copy(tmp_path / "train_masks" / f"{stems[0]}_mask.gif",
                tmp_path / "train_masks" / f"{odd}_mask.gif")
    pairs = [Pair(s, tmp_path / "train" / f"{s}.jpg", tmp_path / "train_masks" / f"{s}_mask.gif")
             for s in [odd, *stems[1:]]]
    return Split("r", False, {"train": pairs[:6], "val": pairs[6:9], "test": pairs[9:]},
                 tmp_path)


def void_split(tmp_path) -> Split:
    """Three 6x8 RGB PNGs with 0/1 masks, void (255) in a training mask."""
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    pairs = []
    for i, stem in enumerate(("a", "b", "c")):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"{stem}.png")
        mask = np.zeros((6, 8), np.uint8)
        mask[1:4, 2:6] = 1
        if i == 0:
            mask[0, 0] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"{stem}.png")
        pairs.append(Pair(stem, tmp_path / "images" / f"{stem}.png",
                          tmp_path / "masks" / f"{stem}.png"))
    return Split("r", False, {"train": pairs[:1], "val": pairs[1:2], "test": pairs[2:]},
                 tmp_path, BINARY, ignore_index=255)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_nnunet_dataset_of_a_split(tmp_path):
    split = synthetic_split(tmp_path / "data")
    folder = tmp_path / "raw" / "Dataset501_Peers"
    cases = nnunet.write_dataset(folder, split.subsets, split.classes, split.read_mask)
    assert cases["car_one_1"] == "car one+1" and len(cases) == 12
    case_of = {stem: case for case, stem in cases.items()}
    training = split.subsets["train"] + split.subsets["val"]
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == sorted(
        f"{case_of[p.stem]}_0000.png" for p in training)
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == sorted(
        f"{case_of[p.stem]}.png" for p in training)
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == sorted(
        f"{case_of[p.stem]}_0000.png" for p in split.subsets["test"])
    assert json.loads((folder / "dataset.json").read_text()) == {
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "foreground": 1}, "numTraining": 9, "file_ending": ".png"}
    assert json.loads((folder / "cases.json").read_text()) == cases
    for pair in training:
        labels = png(folder / "labelsTr" / f"{case_of[pair.stem]}.png")
        assert np.array_equal(labels, split.read_mask(pair.mask))
        assert set(np.unique(labels)) == {0, 1}
        assert np.array_equal(png(folder / "imagesTr" / f"{case_of[pair.stem]}_0000.png"),
                              load_image(pair.image))
    nnunet.write_fold(tmp_path / "pre", split.subsets, cases)
    assert json.loads((tmp_path / "pre" / "splits_final.json").read_text()) == [
        {"train": [case_of[p.stem] for p in split.subsets["train"]],
         "val": [case_of[p.stem] for p in split.subsets["val"]]}]


def test_nnunet_void_is_the_ignore_label(tmp_path):
    split = void_split(tmp_path / "data")
    folder = tmp_path / "Dataset501_Peers"
    nnunet.write_dataset(folder, split.subsets, split.classes, split.read_mask)
    record = json.loads((folder / "dataset.json").read_text())
    assert record["labels"] == {"background": 0, "foreground": 1, "ignore": 2}
    assert record["numTraining"] == 2
    labels = png(folder / "labelsTr" / "a.png")
    truth = split.read_mask(split.subsets["train"][0].mask)
    assert labels[0, 0] == 2 and truth[0, 0] == VOID
    assert np.array_equal(labels[truth != VOID], truth[truth != VOID])


def test_case_ids_stay_unique():
    assert nnunet.case_ids(["a b", "a+b", "a_b.c-1"]) == {"a_b": "a b", "a_b-2": "a+b",
                                                          "a_b.c-1": "a_b.c-1"}


def test_sixteen_bit_grey_keeps_its_values_for_nnunet_and_the_window_for_yolo(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    pairs = []
    for i, stem in enumerate(("t1", "t2", "t3")):
        values = (np.arange(30, dtype=np.uint16).reshape(5, 6) * 997 + 1000 * i).astype(np.uint16)
        tifffile.imwrite(data / "images" / f"{stem}.tif", values)
        Image.fromarray((values > 15000).astype(np.uint8)).save(data / "masks" / f"{stem}.png")
        pairs.append(Pair(stem, data / "images" / f"{stem}.tif", data / "masks" / f"{stem}.png"))
    subsets = {"train": pairs[:1], "val": pairs[1:2], "test": pairs[2:]}
    read = reader(BINARY)
    folder = tmp_path / "nn"
    nnunet.write_dataset(folder, subsets, BINARY, read)
    record = json.loads((folder / "dataset.json").read_text())
    assert record["channel_names"] == {"0": "grey"} and record["file_ending"] == ".png"
    for sub, pair in (("imagesTr", pairs[0]), ("imagesTr", pairs[1]), ("imagesTs", pairs[2])):
        written = Image.open(folder / sub / f"{pair.stem}_0000.png")
        assert written.mode.startswith("I")
        assert np.array_equal(np.asarray(written), tifffile.imread(pair.image))
    window = yolo.training_window(subsets)
    assert window == measure([pairs[0].image], read_deep) and window is not None
    yolo.write_dataset(tmp_path / "yolo", subsets, BINARY, read, window)
    for name, pair in zip(("train", "val", "test"), pairs):
        written = png(tmp_path / "yolo" / "images" / name / f"{pair.stem}.png")
        assert written.dtype == np.uint8 and written.shape == (5, 6, 3)
        assert np.array_equal(written, to_rgb8(tifffile.imread(pair.image), window))


def test_yolo_dataset_of_a_split(tmp_path):
    split = void_split(tmp_path / "data")
    data = yolo.write_dataset(tmp_path / "yolo", split.subsets, split.classes, split.read_mask,
                              None)
    root = tmp_path / "yolo"
    for name, pairs in split.subsets.items():
        stems = sorted(p.stem for p in pairs)
        assert sorted(p.stem for p in (root / "images" / name).iterdir()) == stems
        assert sorted(p.stem for p in (root / "masks" / name).iterdir()) == stems
        for pair in pairs:
            mask = png(root / "masks" / name / f"{pair.stem}.png")
            assert mask.ndim == 2 and np.array_equal(mask, split.read_mask(pair.mask))
            assert np.array_equal(png(root / "images" / name / f"{pair.stem}.png"),
                                  load_image(pair.image))
    assert png(root / "masks" / "train" / "a.png")[0, 0] == 255
    assert yaml.safe_load(data.read_text()) == {
        "path": str(root.resolve()), "train": "images/train", "val": "images/val",
        "test": "images/test", "masks_dir": "masks", "names": {0: "background", 1: "foreground"}}
    parts = Classes(("background", "body", "windows", "wheels"))
    yolo.write_dataset(tmp_path / "parts", split.subsets, parts, split.read_mask, None)
    assert yaml.safe_load((tmp_path / "parts" / "data.yaml").read_text())["names"] == {
        0: "background", 1: "body", 2: "windows", 3: "wheels"}


def masks_on_disk(tmp_path, truths: dict[str, np.ndarray]) -> list[Pair]:
    """Truth masks as PNGs of class indices (void 255), one Pair each."""
    pairs = []
    for stem, truth in truths.items():
        Image.fromarray(np.asarray(truth, np.uint8)).save(tmp_path / f"{stem}.png")
        pairs.append(Pair(stem, tmp_path / f"{stem}.png", tmp_path / f"{stem}.png"))
    return pairs


def test_score_is_dice_by_hand(tmp_path):
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    guess = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
    pairs = masks_on_disk(tmp_path, {"one": truth})
    read = reader(BINARY, ignore=255)
    result = score({"one": guess}, pairs, read, BINARY)
    assert result["dice"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert result["iou"] == pytest.approx(1 / 3)
    # A void pixel where the prediction was wrong changes nothing but that pixel: TP 1, FP 0,
    # FN 1 -> 2/3.
    voided = truth.copy()
    voided[1, 1] = VOID
    pairs = masks_on_disk(tmp_path, {"one": voided})
    assert score({"one": guess}, pairs, read, BINARY)["dice"] == pytest.approx(2 / 3)
    # A void pixel where both agree on background changes nothing.
    voided = truth.copy()
    voided[1, 3] = VOID
    pairs = masks_on_disk(tmp_path, {"one": voided})
    assert score({"one": guess}, pairs, read, BINARY)["dice"] == pytest.approx(0.5)


def test_per_image_mean_and_pooled_dice(tmp_path):
    # Image a: TP 1, FP 1, FN 1 -> 0.5; image b: TP 4, FP 0, FN 0 -> 1.0.
    truths = {"a": [[1, 1, 0, 0], [0, 0, 0, 0]], "b": [[1, 1, 1, 1], [0, 0, 0, 0]]}
    guesses = {"a": np.array([[1, 0, 0, 0], [0, 1, 0, 0]]),
               "b": np.array([[1, 1, 1, 1], [0, 0, 0, 0]])}
    result = score(guesses, masks_on_disk(tmp_path, truths), reader(BINARY), BINARY)
    assert result["dice"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["dice_pooled"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))


def test_three_classes(tmp_path):
    classes = Classes(("background", "car", "road"))
    truth = [[1, 1, 2, 2], [0, 0, 2, 2]]
    guess = np.array([[1, 2, 2, 2], [0, 0, 2, 0]])
    # car: TP 1, FP 0, FN 1 -> 2/3; road: TP 3, FP 1, FN 1 -> 6/8.
    result = score({"x": guess}, masks_on_disk(tmp_path, {"x": truth}),
                   reader(classes), classes)
    assert result["dice_car"] == pytest.approx(2 / 3)
    assert result["dice_road"] == pytest.approx(6 / 8)
    assert result["dice"] == pytest.approx((2 / 3 + 6 / 8) / 2)


def test_missing_or_wrongly_sized_prediction_names_the_stem(tmp_path):
    pairs = masks_on_disk(tmp_path, {"seen": [[1, 0]], "unseen": [[0, 1]]})
    with pytest.raises(BadPrediction, match="unseen"):
        score({"seen": np.array([[1, 0]])}, pairs, reader(BINARY), BINARY)
    with pytest.raises(BadPrediction, match="seen"):
        score({"seen": np.zeros((2, 2)), "unseen": np.array([[0, 1]])}, pairs, reader(BINARY),
              BINARY)


def test_a_failed_system_says_why_in_the_table():
    from tools.peers.__main__ import parse_args, table
    rows = [{"system": "project", "seed": 1, "budget_min": 5.0, "dice": 0.9, "dice_pooled": 0.91,
             "iou": 0.8, "train_s": 300.0, "predict_s": 4.0, "train_rss_mb": 900.0,
             "evaluate_test_dice": 0.9, "chose": {"batch_size": 8}},
            {"system": "nnunet", "seed": 1, "budget_min": 5.0,
             "error": "RuntimeError: nnUNetTrainer_5epochs killed after 900 s with 0 epoch(s)"}]
    text = table(rows)
    assert "| project | 1 | 0.9000 | 0.9100 | 0.8000 | 5.0 min |" in text
    assert "failed: RuntimeError: nnUNetTrainer_5epochs killed after 900 s" in text
    args = parse_args(["out", "--data-dir", "d", "--budget-min", "5,30",
                       "--nnunet-trainer", "nnUNetTrainer_5epochs,nnUNetTrainer_20epochs"])
    assert args.budgets == [5.0, 30.0] and args.trainer_for(30.0) == "nnUNetTrainer_20epochs"


def test_the_peers_are_imported_only_inside_functions():
    """Neither the pipeline nor the tool's modules import nnunetv2 or ultralytics when loaded."""
    peers = ("nnunetv2", "ultralytics")
    for path in [*(ROOT / "unet").rglob("*.py"), *(ROOT / "tools" / "peers").glob("*.py")]:
        tree = ast.parse(path.read_text())
        top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in top if isinstance(n, ast.ImportFrom) and n.module]
        assert not any(name.split(".")[0] in peers for name in names), path
        if path.is_relative_to(ROOT / "unet"):
            assert not any(p in path.read_text() for p in peers), path


class FakeClock:
    """perf_counter of a trainer whose steps take set times."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget_trainer(monkeypatch, clock: FakeClock, startup_s: float, step_s: float,
                   val_step_s: float):
    """nnUNetTrainerBudget on a stand-in of nnU-Net's base class (nnunetv2 is not installed
    here): the base's hooks only advance the clock and count epochs as nnU-Net's do."""
    import importlib.util
    import sys
    import types

    class Scheduler:
        max_steps = 1000

    class nnUNetTrainer:
        def __init__(self, plans, configuration, fold, dataset_json, device):
            self.num_epochs, self.current_epoch = 1000, 0
            self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 250, 50
            self.lr_scheduler, self.log = Scheduler(), []
            self.dataloader_train = self.dataloader_val = iter(int, 1)    # endless

        def on_train_start(self):
            clock.now += startup_s

        def train_step(self, batch):
            clock.now += step_s

        def validation_step(self, batch):
            clock.now += val_step_s

        def on_epoch_end(self):
            self.current_epoch += 1

        def on_train_end(self):
            self.log.append("final checkpoint")

        def print_to_log_file(self, text):
            self.log.append(text)

    for hook in ("on_epoch_start", "on_train_epoch_start", "on_train_epoch_end",
                 "on_validation_epoch_start", "on_validation_epoch_end"):
        setattr(nnUNetTrainer, hook, lambda self, *outputs: None)
    base = types.ModuleType("nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
    base.nnUNetTrainer = nnUNetTrainer
    for name in ("nnunetv2", "nnunetv2.training", "nnunetv2.training.nnUNetTrainer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, base.__name__, base)
    path = ROOT / "tools" / "peers" / "nnunet_trainer" / "nnUNetTrainerBudget.py"
    spec = importlib.util.spec_from_file_location("budget_trainer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.time, "perf_counter", clock)
    return module.nnUNetTrainerBudget({}, "2d", 0, {}, None)


def test_budget_trainer_fits_its_epochs_and_schedule_to_the_budget(monkeypatch):
    """300 s, 20 s of start-up, epochs of 10 x 6 s + 2 x 2 s = 64 s: after the first (84 s
    spent) 3 more fit (216 s left), and it ends after 4 epochs at 276 s, the poly schedule
    stretched over 4."""
    clock = FakeClock()
    monkeypatch.setenv(*nnunet.budget(300).popitem())    # as the tool sets it
    trainer = budget_trainer(monkeypatch, clock, startup_s=20, step_s=6, val_step_s=2)
    trainer.run_training()
    assert trainer.current_epoch == trainer.num_epochs == 4
    assert trainer.lr_scheduler.max_steps == 4
    assert clock.now == 20 + 4 * 64 <= 300
    trainer.perform_actual_validation()
    assert trainer.log == ["final checkpoint",
                           "Validation of the whole split skipped (tools/peers)."]


def test_budget_trainer_stops_after_one_epoch_that_overran(monkeypatch):
    clock = FakeClock()
    monkeypatch.setenv(*nnunet.budget(50).popitem())    # as the tool sets it
    trainer = budget_trainer(monkeypatch, clock, startup_s=20, step_s=6, val_step_s=2)
    trainer.run_training()
    assert trainer.current_epoch == trainer.num_epochs == 1 and clock.now == 84


def test_a_missing_peers_environment_names_the_install_command(tmp_path):
    from tools.peers.__main__ import INSTALL, missing
    absent = tmp_path / "none" / "bin" / "python"
    assert missing("nnunet", absent) == f"no peers' environment at {absent}: {INSTALL}"
    assert missing("project", absent) is None
    # This environment is the pipeline's: no ultralytics in it.
    assert missing("yolo", Path(sys.executable)) == (
        f"ultralytics is not in {sys.executable}: {INSTALL}")
    assert "pip install -r tools/peers/requirements.txt" in INSTALL
    pinned = (ROOT / "tools" / "peers" / "requirements.txt").read_text()
    assert all(f"{p}==" in pinned for p in ("torch", "torchvision", "nnunetv2", "ultralytics"))


def test_arguments_refused_in_one_line():
    from tools.peers.__main__ import parse_args
    args = parse_args(["out", "--folder", "quick", "--systems", "project,yolo"])
    assert args.systems == ["project", "yolo"] and args.data_dir is None
    for argv in (["out", "--folder", "quick", "--systems", "nnunet,detectron"],
                 ["out", "--folder", "quick", "--data-dir", "d"], ["out"],
                 ["out", "--folder", "quick", "--budget-min", "abc"],
                 ["out", "--folder", "quick", "--budget-min", "5,0"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


def test_nnunet_predicts_with_its_mirroring_unless_told():
    """nnU-Net as it ships mirrors each window (4 passes in 2d); --nnunet-no-mirroring passes
    its own --disable_tta flag and nothing else changes."""
    from tools.peers.__main__ import parse_args
    images, out = Path("imagesTs"), Path("predicted")
    shipped = nnunet.predict_command(501, "nnUNetTrainerBudget", images, out)
    assert "--disable_tta" not in shipped
    assert shipped[:5] == ["nnUNetv2_predict", "-i", "imagesTs", "-o", "predicted"]
    assert nnunet.predict_command(501, "nnUNetTrainerBudget", images, out,
                                  mirroring=False) == [*shipped, "--disable_tta"]
    assert not parse_args(["out", "--folder", "car8"]).nnunet_no_mirroring
    assert parse_args(["out", "--folder", "car8", "--nnunet-no-mirroring"]).nnunet_no_mirroring


@pytest.mark.slow
def test_the_tool_end_to_end_without_the_peers(tmp_path):
    """The real tool on a small generated folder, no peers' environment: the project trained
    and evaluated through `mlflow run`, its test images scored by the peers' scorer (equal to
    evaluate's own test_dice), the peers' rows failed with the install command, the table,
    the chart and the nested MLflow runs written."""
    import mlflow

    from tools.peers.__main__ import INSTALL
    generate(tmp_path / "data", 16, 48, 72, seed=3)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tools.peers", str(out), "--data-dir",
                           str(tmp_path / "data"), "--budget-min", "0.25", "--seeds", "1",
                           "--peers-python", str(tmp_path / "none" / "python")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads((out / "peers-0.25min.json").read_text())
    assert [r["system"] for r in rows] == ["project", "nnunet", "yolo"]
    project, *peers = rows
    assert "error" not in project, project
    assert project["dice"] == pytest.approx(project["evaluate_test_dice"], abs=1e-6)
    assert 0 < project["train_s"] and project["chose"]["batch_size"]
    for row in peers:
        assert row["error"] == f"no peers' environment at {tmp_path / 'none' / 'python'}: {INSTALL}"
    text = (out / "peers-0.25min.md").read_text()
    assert f"| project | 1 | {project['dice']:.4f} |" in text
    assert text.count("failed: no peers' environment") == 2
    assert (out / "peers-0.25min.png").read_bytes()[:4] == b"\x89PNG"
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("peers").experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "peers-0.25min"]
    children = {r.data.params["system"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["nnunet", "project", "yolo"]
    assert children["project"].data.metrics["dice"] == pytest.approx(project["dice"])
    assert children["yolo"].data.tags["error"].startswith("no peers' environment")
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert artifacts == {"peers-0.25min.json", "peers-0.25min.md", "peers-0.25min.png"}
    # Every run's artifacts (the split's, the model's, the table's) are under OUT, none in
    # the checkout where `mlflow run` starts the steps.
    for name in ("quality", "peers"):
        experiment = client.get_experiment_by_name(name)
        assert experiment.artifact_location == (out / "artifacts" / name).resolve().as_uri()
        for run in client.search_runs([experiment.experiment_id]):
            assert run.info.artifact_uri.startswith(experiment.artifact_location), run.info


def test_a_folder_the_split_step_refuses_stops_the_tool_with_its_one_line(tmp_path):
    """The split step's own reason reaches the user as one line, not a traceback."""
    done = subprocess.run([sys.executable, "-m", "tools.peers", str(tmp_path / "out"),
                           "--data-dir", str(tmp_path / "missing"), "--systems", "project"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tools.peers: split_data failed (exit 1): folder not found: ")
    assert str(tmp_path / "missing" / "train") in last
    assert last.endswith(f"see {tmp_path / 'out' / 'split.log'}")
