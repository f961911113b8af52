"""Entry point split_data: find and check image/mask pairs, split them by car, log the split."""
import tempfile
from pathlib import Path

from unet.config import pipeline as config
from unet.data import check, synthetic
from unet.data.pairs import GroupRule, parse_group, split_pairs
from unet.data.report import DataReport
from unet.errors import UserError
from unet.evaluation import label_quality
from unet.tracking import cli, reports, runs, splits


def split_data() -> None:
    cfg = config.load("split_data", cli.overrides("split_data"))
    builtin = cfg.data_dir == "synthetic"
    with runs.step_run("split_data") as run, tempfile.TemporaryDirectory() as tmp:
        runs.log_effective_params(config.as_params(cfg))
        if builtin:
            data_dir = Path(tmp)
            synthetic.generate(data_dir, cfg.num_images, cfg.synthetic_height,
                               cfg.synthetic_width, cfg.seed, cfg.synthetic_classes)
        else:
            data_dir = Path(cfg.data_dir).expanduser().resolve()
        rule = parse_group(cfg.group)
        report = checked_pairs(cfg, data_dir, rule)
        pairs = report.pairs
        subsets = split_pairs(pairs, cfg.val_fraction, cfg.test_fraction, cfg.seed, rule)
        layout = {k: getattr(cfg, k) for k in ("image_dir", "mask_dir", "mask_suffix", "mask_ext")}
        splits.log_split(subsets, layout, data_dir, builtin, report.classes,
                         report.ignore_index, report.instances, report.kind, rule)
        sizes = ", ".join(f"{name} {len(p)}" for name, p in subsets.items())
        groups = len({rule.of(pair.stem) for pair in pairs})
        runs.name_run(f"split_data {'built-in' if builtin else data_dir.name}: {groups} groups, "
                      f"{len(pairs)} images")
        print(f"split_data run {run.info.run_id}: {len(pairs)} pairs from "
              f"{'the built-in set' if builtin else data_dir}: {sizes}; "
              f"{report.classes.count} classes ({', '.join(report.classes.names)})")
        for line in report.reading():
            print(line)


def checked_pairs(cfg, data_dir: Path, rule: GroupRule) -> DataReport:
    """The data check of data_dir, less the images of parameter exclude, with the groups of
    `rule`, logged as the data report; UserError on bad files (on_bad_data=fail), when no
    pair is left or an image does not match the group rule."""
    report = check.validate_folder(data_dir / cfg.image_dir, data_dir / cfg.mask_dir,
                                        cfg.mask_suffix, cfg.mask_ext,
                                        multiclass_ok=cfg.multiclass_masks == "threshold",
                                        classes=_class_names(cfg), ignore_index=cfg.ignore,
                                        mask_kind=cfg.mask_kind)
    if cfg.exclude:
        report = check.exclude(report, *read_exclude(cfg.exclude))
    report.groups = (f"{len({rule.of(pair.stem) for pair in report.pairs})} groups kept "
                     f"together by the split, by parameter group={rule.describe()}")
    report_uri = reports.log_data_report(report)
    bad = report.counts["bad_files"]
    if bad and cfg.on_bad_data == "fail":
        hint = f" How the masks were read: {report.mask_kind}; {report.hint()}." \
            if report.hint() else ""
        raise UserError(f"{bad} bad file(s) in {data_dir}: {report.summary()}.{hint} Every "
                        f"problem is listed in {report_uri}. Fix or remove them, or pass "
                        f"-P on_bad_data=skip to train on the other pairs")
    if not report.pairs:
        raise UserError(f"no usable image/mask pair in {data_dir}: see {report_uri}")
    if bad:
        print(f"skipped {bad} bad file(s) (on_bad_data=skip): {report.summary(5)}; "
              f"see {report_uri}")
    if report.counts.get("excluded"):
        print(f"left out {report.counts['excluded']} image(s) named in {cfg.exclude} "
              f"(parameter exclude); see {report_uri}")
    return report


def read_exclude(name: str) -> tuple[list[str], str]:
    """(the stems file `name` lists, its absolute path); UserError if there is no such file."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"parameter exclude={name}: no such file; give the absolute path of a "
                        f"file of image stems, one a line (or evaluate's label_quality/ranking.csv)")
    return label_quality.read_stems(path), str(path.resolve())


def _class_names(cfg) -> str:
    """The `classes` parameter; the built-in set's part masks come with their names."""
    if cfg.data_dir == "synthetic" and cfg.synthetic_classes > 2 and cfg.classes == "auto":
        return ",".join(synthetic.PART_NAMES)
    return cfg.classes


if __name__ == "__main__":
    cli.main(split_data)
