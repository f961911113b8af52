"""The split between steps: split.json, the generated data set, the data report, and the
subsets recorded as run inputs (lineage in the UI)."""
from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import warnings
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

from unet.data.pairs import GroupRule, MaskNaming, Pair
from unet.errors import UserError
from unet.labels.classes import Classes, reader
from unet.tracking.runs import get_run

SPLIT_FILE = "split.json"
CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
DATA_ARTIFACTS = "data"


@dataclasses.dataclass
class Split:
    """The split a split_data run logged, with its pairs on this machine."""
    run_id: str
    builtin: bool
    subsets: dict[str, list[Pair]]     # "train", "val", "test"
    data_dir: Path
    classes: Classes = Classes.numbered(2)
    ignore_index: int | None = None    # the masks' void value (None: none), unet.labels.masks
    instances: bool = False            # masks of instance labels: nonzero is foreground
    group_rule: GroupRule = GroupRule()  # what the split kept together (parameter group)

    def read_mask(self, path: Path):
        """A mask of this split as training and evaluation read it: (H, W) uint8, 0/1 or
        class indices, void pixels unet.labels.masks.VOID."""
        return reader(self.classes, self.ignore_index, self.instances)(path)

    @property
    def plan_reader(self):
        """How the training plan reads the masks for object sizes: as before (None: binary
        thresholding) unless the masks hold void, instance labels or classes (read_mask: a
        coloured part mask thresholded at half its luminance would lose its darker parts)."""
        plain = self.ignore_index is None and not self.instances and self.classes.binary
        return None if plain else self.read_mask


def _pairs_digest(pairs: list[Pair]) -> str:
    """Names and sizes of the files: cheap on 5,000 Carvana photos, changes when files do."""
    h = hashlib.sha256()
    for p in pairs:
        for f in (p.image, p.mask):
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()[:16]


def log_dataset(pairs: list[Pair], name: str, context: str, source: str) -> None:
    """Records a subset as a run input (lineage in the UI): name, digest, source."""
    if source.startswith("mlflow-artifacts:"):
        # Artifacts a tracking server proxies: MLflow has no dataset source for that scheme,
        # so record the server's HTTP address of the same files.
        source = MlflowArtifactsRepository.resolve_uri(source, mlflow.get_tracking_uri())
    with warnings.catch_warnings():   # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source)
    dataset = MetaDataset(resolved, name=name, digest=_pairs_digest(pairs))
    mlflow.log_input(dataset, context=context)


def log_split(subsets: dict[str, list[Pair]], layout: dict[str, str], data_dir: Path,
              builtin: bool, classes: Classes = Classes.numbered(2),
              ignore_index: int | None = None, instances: bool = False,
              mask_kind: str = "binary", group: GroupRule = GroupRule()) -> None:
    """Logs split.json (stems per subset, the folder layout, the class names, the void value,
    whether the masks hold instance labels, what the mask values were read as and the group
    rule), the generated data set itself when builtin, and each subset as an input."""
    record = {"builtin": builtin, "data_dir": None if builtin else str(Path(data_dir).resolve()),
              "classes": list(classes.names), "ignore_index": ignore_index,
              "instances": instances, "mask_kind": mask_kind, "group": group.text,
              **layout, **{name: [p.image.name for p in pairs] for name, pairs in subsets.items()}}
    mlflow.log_dict(record, SPLIT_FILE)
    if builtin:
        mlflow.log_artifacts(str(data_dir), DATA_ARTIFACTS)
    source = mlflow.get_artifact_uri(DATA_ARTIFACTS) if builtin else str(Path(data_dir).resolve())
    for name, pairs in subsets.items():
        if pairs:
            log_dataset(pairs, name, CONTEXTS[name], source)
    mlflow.log_metrics({f"{name}_images": len(pairs) for name, pairs in subsets.items()})


def dataset_source(split: Split) -> str:
    """Where the split's data lives for lineage: the split run's artifacts, or the folder."""
    if split.builtin:
        return f"{mlflow.get_run(split.run_id).info.artifact_uri}/{DATA_ARTIFACTS}"
    return str(split.data_dir)


def log_split_inputs(split: Split, names: tuple[str, ...]) -> None:
    """Records the split's subsets `names` as inputs of the active run."""
    for name in names:
        log_dataset(split.subsets[name], name, CONTEXTS[name], dataset_source(split))


def load_split(run_id: str, param: str = "split_run_id", workdir: Path | None = None) -> Split:
    """The split of split_data run `run_id`; the generated data set is downloaded to workdir."""
    get_run(run_id, "split_data", param)
    try:
        record = mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPLIT_FILE}")
    except MlflowException:
        raise UserError(f"parameter {param}={run_id}: that run logged no {SPLIT_FILE}; "
                        f"pass the id of a finished split_data run") from None
    if record["builtin"]:
        workdir = Path(workdir or tempfile.mkdtemp(prefix="unet-data-"))
        data_dir = Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=DATA_ARTIFACTS, dst_path=str(workdir)))
    else:
        data_dir = Path(record["data_dir"])
        if not data_dir.is_dir():
            raise UserError(f"the data of split run {run_id} was at {data_dir}, which is not on "
                            f"this machine: run split_data here with -P data_dir=...")
    image_dir, mask_dir = data_dir / record["image_dir"], data_dir / record["mask_dir"]
    naming = MaskNaming(record["mask_suffix"], record["mask_ext"])
    subsets = {name: [Pair(Path(n).stem, image_dir / n, mask_dir / naming.mask_name(Path(n).stem))
                      for n in record[name]] for name in ("train", "val", "test")}
    missing = [p.image for pairs in subsets.values() for p in pairs if not p.image.is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) of split run {run_id} are gone, e.g. "
                        f"{missing[0]}: restore them or run split_data again")
    # Splits logged before classes were recorded are binary.
    names = tuple(record.get("classes") or Classes.numbered(2).names)
    # ... and those logged before void, instance labels and group rules were, have neither
    # (they were split by car: the auto rule).
    return Split(run_id, record["builtin"], subsets, data_dir, Classes(names),
                 record.get("ignore_index"), bool(record.get("instances")),
                 GroupRule(record.get("group", "auto")))
