"""Side-by-side speed benchmark: the seed tutorial's training step against this project's, how
close the project's step comes to the processor's matmul peak, whether the data pipeline and
inference keep up, and the peak memory of each.

    python -m tools.bench [--quick] [--json FILE]

Training and inference each run in a process of their own (spawned, so each one's peak RSS is
its own) that keeps its model between calls; the measurements alternate in rounds (matmul
peak, tutorial step, project step, prediction) and the table reports medians, so a neighbour's
load hits both sides of every ratio alike.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from tools import tutorial  # noqa: E402
from unet.config import pipeline as config
from unet.data import synthetic
from unet.data.cache import ArrayCache  # noqa: E402
from unet.data.check import validate_folder  # noqa: E402
from unet.data.pairs import SegmentationDataset, load_mask  # noqa: E402
from unet.evaluation.scoring import evaluate_pairs  # noqa: E402
from unet.images import transforms
from unet.images.reading import load_image
from unet.inference.segmenter import Segmenter  # noqa: E402
from unet.network import precision as precisions
from unet.network.model import UNet  # noqa: E402
from unet.training import engine, schedule

FULL = dict(features=(64, 128, 256, 512), size=(160, 240), batch=16, rounds=3,
            data_images=32, data_epochs=3, source_size=(1280, 1918), matmul=4096)
QUICK = dict(FULL, batch=4, rounds=2, data_images=8, data_epochs=2, matmul=2048)


# --- pure measurements ---------------------------------------------------------------------

def step_flops(model: nn.Module, image_size: tuple[int, int], channels: int = 3) -> float:
    """FLOPs of one training step's forward + backward per image (matmuls and convolutions,
    as torch's FlopCounterMode counts them; Adam and elementwise ops are not counted). A model
    on the meta device is counted without computing anything."""
    model = model.train()
    x = torch.zeros(1, channels, *image_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(dtype: torch.dtype, n: int, device: torch.device, reps: int = 3) -> float:
    """The sustained rate of `reps` back-to-back (n x n) @ (n x n) products, in GFLOP/s
    (2 n^3 FLOPs each): timed over all of them, like a training step, so a neighbour's load
    lowers the peak as much as it lowers the step it is compared with."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    _sync(device)
    return reps * 2 * n ** 3 / (time.perf_counter() - start) / 1e9


def synthetic_batch(batch: int, size: tuple[int, int], seed: int = 0):
    """The same data for both sides: images (B, 3, H, W) in [0, 1], 0/1 masks (B, H, W)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *size, generator=g)
    masks = (torch.rand(batch, *size, generator=g) > 0.5).float()
    return images, masks


# --- what each spawned process does ---------------------------------------------------------

_STATE: dict = {}


def _measured(fn, *args):
    """Runs fn(*args) in a phase process; returns (result, that process's peak RSS in MB)."""
    result = fn(*args)
    return result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _tutorial_round(cfg: dict, steps: int) -> float:
    """Images/s of the tutorial's train_fn (fp32 NCHW) on `steps` batches."""
    if "model" not in _STATE:
        torch.manual_seed(0)
        model = UNet(features=cfg["features"]).to(tutorial.DEVICE)
        _STATE.update(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-4),
                      scaler=tutorial.make_scaler(), loss_fn=nn.BCEWithLogitsLoss(),
                      batch=synthetic_batch(cfg["batch"], cfg["size"]))
    s = _STATE
    start = time.perf_counter()
    tutorial.train_fn([s["batch"]] * steps, s["model"], s["optimizer"], s["loss_fn"], s["scaler"])
    return steps * cfg["batch"] / (time.perf_counter() - start)


def _project_round(cfg: dict, steps: int) -> float:
    """Images/s of engine.train_one_epoch (the train step's loop) on `steps` batches."""
    if "model" not in _STATE:
        torch.manual_seed(0)
        precision = precisions.choose_precision("auto")
        model = precisions.prepare(UNet(features=cfg["features"]), precision)
        _STATE.update(model=model, precision=precision,
                      optimizer=torch.optim.Adam(model.parameters(), lr=1e-4),
                      scaler=torch.amp.GradScaler(precision.device.type,
                                                  enabled=precision.grad_scaler),
                      loss_fn=nn.BCEWithLogitsLoss(),
                      batch=synthetic_batch(cfg["batch"], cfg["size"]))
    s = _STATE
    return engine.train_one_epoch(s["model"], [s["batch"]] * steps, s["optimizer"], s["loss_fn"],
                                  s["precision"], s["scaler"])["images_per_second"]


def _predict_round(cfg: dict, batches: int) -> float:
    """Images/s of Segmenter.masks on training-size images (what evaluate and serving run
    after decoding), batch = the training batch."""
    if "segmenter" not in _STATE:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        _STATE.update(segmenter=Segmenter(UNet(features=cfg["features"]), cfg["size"]),
                      images=list(rng.integers(0, 256, (cfg["batch"], *cfg["size"], 3), np.uint8)))
    s = _STATE
    start = time.perf_counter()
    for _ in range(batches):
        for _ in s["segmenter"].masks(s["images"], batch_size=cfg["batch"]):
            pass
    return batches * cfg["batch"] / (time.perf_counter() - start)


def _evaluate_full_size(cfg: dict, data_dir: str) -> float:
    """Images/s of evaluate_pairs on the full-size pairs, prediction files included."""
    pairs = validate_folder(Path(data_dir) / "train", Path(data_dir) / "train_masks").pairs
    segmenter = _STATE["segmenter"]
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        evaluate_pairs(segmenter, pairs, batch_size=cfg["batch"], out_dir=Path(out))
        return len(pairs) / (time.perf_counter() - start)


def _data_pipeline(cfg: dict, data_dir: str, num_workers: int) -> dict:
    """Decode + augment + collate throughput (img/s) of the training loader on full-size pairs:
    a first run (decoding, disk cache cold), a later run (disk cache warm) and later epochs."""
    pairs = validate_folder(Path(data_dir) / "train", Path(data_dir) / "train_masks").pairs
    size, precision = cfg["size"], precisions.choose_precision("auto")
    out: dict = {"images": len(pairs), "num_workers": num_workers}
    decode = {"jpeg_full": lambda p: load_image(p.image), "jpeg_draft": lambda p: load_image(p.image, size),
              "gif_mask": lambda p: load_mask(p.mask)}
    for name, fn in decode.items():
        start = time.perf_counter()
        for pair in pairs:
            fn(pair)
        out[f"decode_ms_{name}"] = (time.perf_counter() - start) / len(pairs) * 1000

    def new_run(cache: ArrayCache) -> tuple[float, float, torch.utils.data.DataLoader]:
        """Preload (img/s) and the first epoch (s, loader workers starting included)."""
        start = time.perf_counter()
        dataset = SegmentationDataset(pairs, size, transforms.train_transform(seed=0), cache).preload()
        loaded = time.perf_counter()
        sampler = schedule.EpochSampler(len(dataset), len(dataset), seed=0)
        loader = engine.make_loader(dataset, cfg["batch"], num_workers, 0, precision, sampler)
        for _ in loader:
            pass
        return len(pairs) / (loaded - start), time.perf_counter() - loaded, loader

    with tempfile.TemporaryDirectory() as cache_dir:
        out["preload_cold"], out["first_epoch_seconds"], _ = new_run(ArrayCache(cache_dir))
        out["preload_disk_cache"], _, loader = new_run(ArrayCache(cache_dir))
    later = []
    for _ in range(cfg["data_epochs"]):
        start = time.perf_counter()
        for _ in loader:
            pass
        later.append(len(pairs) / (time.perf_counter() - start))
    out["later_epochs"] = statistics.median(later)
    return out


# --- the run ---------------------------------------------------------------------------------

class Phase:
    """One spawned process that keeps its state between calls and reports its own peak RSS."""

    def __init__(self):
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        self.peak_rss_mb = 0.0

    def __call__(self, fn, *args):
        result, rss = self.pool.submit(_measured, fn, *args).result()
        self.peak_rss_mb = max(self.peak_rss_mb, rss)
        return result

    def close(self):
        self.pool.shutdown()


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
    except OSError:
        names = [platform.processor()]
    return f"{names[0] if names else 'CPU'}, {os.cpu_count()} cores"


def run(cfg: dict, num_workers: int, log=print) -> dict:
    """Every measurement of the benchmark; returns the figures (see docs/speed.md)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = precisions.choose_precision("auto")
    result: dict = {"machine": machine(), "torch": torch.__version__, "device": str(device),
                    "precision": precision.name,
                    "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}}
    with torch.device("meta"):
        flops = step_flops(UNet(features=cfg["features"]), cfg["size"])
    result["gflop_per_image"] = flops / 1e9
    log(f"{result['machine']}; torch {torch.__version__}; project precision {precision.name}; "
        f"{flops / 1e9:.1f} GFLOP per image per step")

    with tempfile.TemporaryDirectory() as data_dir:
        synthetic.generate(Path(data_dir), cfg["data_images"], *cfg["source_size"], seed=0)
        phases = {name: Phase() for name in ("tutorial", "project", "predict", "data")}
        try:
            rounds: dict[str, list[float]] = {k: [] for k in
                                              ("fp32_peak", "bf16_peak", "tutorial", "project", "predict")}
            phases["tutorial"](_tutorial_round, cfg, 1)     # warm-up: oneDNN primitives, allocator
            phases["project"](_project_round, cfg, 1)
            phases["predict"](_predict_round, cfg, 1)
            for i in range(cfg["rounds"]):
                rounds["fp32_peak"].append(matmul_gflops(torch.float32, cfg["matmul"], device))
                rounds["bf16_peak"].append(matmul_gflops(torch.bfloat16, cfg["matmul"], device))
                rounds["tutorial"].append(phases["tutorial"](_tutorial_round, cfg, 1))
                rounds["project"].append(phases["project"](_project_round, cfg, 1))
                rounds["predict"].append(phases["predict"](_predict_round, cfg, 2))
                log(f"round {i + 1}/{cfg['rounds']}: " + ", ".join(
                    f"{k} {v[-1]:.2f}" for k, v in rounds.items()))
            evaluate_full = phases["predict"](_evaluate_full_size, cfg, data_dir)
            result["data"] = phases["data"](_data_pipeline, cfg, data_dir, num_workers)
        finally:
            for phase in phases.values():
                phase.close()

    result.update(summarize(rounds, flops, result["data"]["later_epochs"], evaluate_full))
    result["peak_rss_mb"] = {name: phase.peak_rss_mb for name, phase in phases.items()}
    return result


def summarize(rounds: dict[str, list[float]], flops_per_image: float, data_images_per_second: float,
              evaluate_images_per_second: float) -> dict:
    """The headline figures from the rounds' medians (img/s, GFLOP/s, and the ratios)."""
    m = {k: statistics.median(v) for k, v in rounds.items()}
    project_gflops = m["project"] * flops_per_image / 1e9
    tutorial_gflops = m["tutorial"] * flops_per_image / 1e9
    return {
        "rounds": rounds,
        "matmul_peak_gflops": {"fp32": m["fp32_peak"], "bf16": m["bf16_peak"]},
        "train_tutorial_images_per_second": m["tutorial"],
        "train_project_images_per_second": m["project"],
        "train_speedup": m["project"] / m["tutorial"],
        "train_tutorial_gflops": tutorial_gflops,
        "train_project_gflops": project_gflops,
        "bf16_peak_fraction": project_gflops / m["bf16_peak"],
        "tutorial_fp32_peak_fraction": tutorial_gflops / m["fp32_peak"],
        "data_vs_train": data_images_per_second / m["project"],
        "predict_images_per_second": m["predict"],
        "eval_vs_train": m["predict"] / m["project"],
        "evaluate_full_size_images_per_second": evaluate_images_per_second,
        "evaluate_full_size_vs_train": evaluate_images_per_second / m["project"],
    }


def table(r: dict) -> str:
    """The figures as a Markdown table (what docs/speed.md shows)."""
    d, rss = r["data"], r["peak_rss_mb"]
    c = r["config"]
    h, w = c["source_size"]
    rows = [
        ("matmul peak fp32 / bf16 (sustained)", f"{r['matmul_peak_gflops']['fp32']:.0f} / "
                                    f"{r['matmul_peak_gflops']['bf16']:.0f} GFLOP/s", ""),
        ("train step, tutorial (fp32, NCHW)", f"{r['train_tutorial_images_per_second']:.2f} img/s",
         f"{r['train_tutorial_gflops']:.0f} GFLOP/s, {r['tutorial_fp32_peak_fraction']:.0%} of fp32 peak; "
         f"RSS {rss['tutorial']:.0f} MB"),
        (f"train step, project ({r['precision']}, channels_last)",
         f"{r['train_project_images_per_second']:.2f} img/s",
         f"{r['train_project_gflops']:.0f} GFLOP/s; RSS {rss['project']:.0f} MB"),
        ("**train_speedup** (project / tutorial)", f"**{r['train_speedup']:.2f}x**", ""),
        ("**bf16_peak_fraction** (project step)", f"**{r['bf16_peak_fraction']:.0%}**",
         f"{r['gflop_per_image']:.1f} GFLOP per image"),
        (f"data: decode {w}x{h} + resize, first run (cache cold)", f"{d['preload_cold']:.1f} img/s",
         f"JPEG {d['decode_ms_jpeg_full']:.0f} ms full / {d['decode_ms_jpeg_draft']:.0f} ms draft; "
         f"GIF {d['decode_ms_gif_mask']:.0f} ms"),
        ("data: the same in a later run (disk cache)", f"{d['preload_disk_cache']:.0f} img/s", ""),
        ("data: augment + collate, first epoch", f"{d['images'] / d['first_epoch_seconds']:.0f} img/s",
         f"{d['num_workers']} loader workers (their start included)"),
        ("data: augment + collate, later epochs", f"{d['later_epochs']:.0f} img/s",
         f"RSS {rss['data']:.0f} MB"),
        ("**data_vs_train** (later epochs / project step)", f"**{r['data_vs_train']:.0f}x**", ""),
        ("prediction (Segmenter, training size)", f"{r['predict_images_per_second']:.2f} img/s",
         f"RSS {rss['predict']:.0f} MB"),
        ("**eval_vs_train** (prediction / project step)", f"**{r['eval_vs_train']:.2f}x**", ""),
        (f"evaluate_pairs at {w}x{h} (decode, predict, score, write)",
         f"{r['evaluate_full_size_images_per_second']:.2f} img/s",
         f"{r['evaluate_full_size_vs_train']:.2f}x the project step"),
    ]
    lines = ["| measurement | value | notes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {n} |" for a, b, n in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 4, fewer rounds and images (under 2 minutes on 2 cores)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    num_workers = int(config.read_params()["train"]["num_workers"])
    start = time.perf_counter()
    result = run(cfg, num_workers)
    result["seconds"] = time.perf_counter() - start
    print(f"\n{result['machine']}, torch {result['torch']}, "
          f"{'quick' if args.quick else 'full'} run in {result['seconds']:.0f} s "
          f"(U-Net {','.join(map(str, cfg['features']))}, {cfg['size'][0]}x{cfg['size'][1]}, "
          f"batch {cfg['batch']}, medians of {cfg['rounds']} alternating rounds)\n")
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
