"""predict at Carvana scale: throughput, single-image latency and peak memory at two sizes.

    python -m tools.predict_bench OUT --images 2000 --small 200 [--kill] [--spark] [--json F]

Generates `--images` Carvana-like 1918x1280 JPEGs under OUT/images (tools.datasets' dusk cars:
`--scenes` rendered scenes, each written many times shifted and mirrored, so 2,000 files take a
minute rather than twenty), then runs the streaming predict (unet.inference.streaming, the code the
predict step runs) in a fresh process per measurement, both formats, on the first `--small`
images and on all of them, and reports images/s and peak RSS side by side. The model is an
untrained U-Net of the CPU plan's size (features 16..128 at 128x192, bf16 where the CPU has
it): speed does not depend on the weights. Then it checks that every RLE row decodes to the
PNG mask of its image, and with --kill it kills a run with SIGKILL at a random moment, reruns
it, and compares the CSV with the uninterrupted one byte for byte; with --spark it runs
engine=spark (local[*], needs `.[spark]`) on the `--small` images and compares its CSV too.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def generate(out: Path, images: int, scenes: int, seed: int = 2026) -> list[Path]:
    """`images` 1918x1280 JPEGs in out (kept if already there): `scenes` rendered dusk cars,
    each written shifted (np.roll) and, every other time, mirrored."""
    from tools.datasets import carvana_folder
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{i:06d}_{i % 16 + 1:02d}.jpg" for i in range(images)]
    if all(p.exists() for p in paths):
        return paths
    base = carvana_folder(out.parent / "scenes", scenes, seed)
    bases = [np.asarray(Image.open(p)) for p in sorted((base / "train").glob("*.jpg"))]
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        image = np.roll(bases[i % len(bases)], int(rng.integers(-300, 300)), axis=1)
        Image.fromarray(image[:, ::-1] if i % 2 else image).save(path, quality=90)
    return paths


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike getrusage's ru_maxrss, it starts
    afresh at exec, so the parent's peak does not leak into the child's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    """One measurement in this process: prints a JSON line."""
    import torch

    from unet.images.reading import read_for_model
    from unet.inference import rle
    from unet.inference.segmenter import Segmenter
    from unet.inference.streaming import CsvSink, PngSink, predict_stream
    from unet.network.model import UNet
    torch.manual_seed(0)
    segmenter = Segmenter(UNet(features=tuple(args.features)), tuple(args.size))
    images = [Path(line) for line in Path(args.list).read_text().split()]
    if args.worker == "latency":
        times = []
        for path in images[:args.latency_images]:
            start = time.perf_counter()
            image, size = read_for_model(path, segmenter.image_size)
            rle.encode(next(segmenter.masks([image], sizes=[size])))
            times.append(time.perf_counter() - start)
        result = {"latency_ms": 1000 * statistics.median(times[1:])}
    elif args.worker == "spark":
        result = spark_run(segmenter, images, Path(args.out), args.batch_size)
    else:
        sink = CsvSink(Path(args.out) / "submission.csv") if args.worker == "rle" \
            else PngSink(Path(args.out))
        start = time.perf_counter()
        outcome = predict_stream(segmenter, images, sink, 0.5, args.batch_size, log=lambda m: None)
        elapsed = time.perf_counter() - start
        result = {"images": outcome.predicted, "seconds": elapsed,
                  "images_per_s": outcome.predicted / elapsed}
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


def spark_run(segmenter, images: list[Path], out: Path, batch_size: int) -> dict:
    """engine=spark on local[*]: the model logged to a private store, then the Spark job
    (session start, model load in the workers and all included)."""
    import mlflow

    from unet.inference.streaming import CsvSink
    from unet.tracking import models
    from unet.tracking.spark_predict import predict_spark
    out.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    with mlflow.start_run():
        model_uri = models.log_model(segmenter, np.zeros((16, 24, 3), np.uint8))
    start = time.perf_counter()
    outcome = predict_spark(model_uri, images, CsvSink(out / "submission.csv"), 0.5, "auto",
                            batch_size, "local[*]", log=lambda m: print(m, file=sys.stderr))
    elapsed = time.perf_counter() - start
    return {"images": outcome.predicted, "seconds": elapsed,
            "images_per_s": outcome.predicted / elapsed}


def measure(args, kind: str, paths: list[Path], out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)                 # a fresh run, nothing to skip
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, "-m", "tools.predict_bench", str(args.out), "--worker", kind,
           "--list", str(listing), "--worker-out", str(out), "--batch-size", str(args.batch_size)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_rle_equals_png(csv: Path, masks: Path) -> int:
    """Every row of the CSV decodes to the PNG mask of its image; returns the row count."""
    from unet.inference import rle
    lines = csv.read_text().splitlines()
    assert lines[0] == "img,rle_mask"
    for line in lines[1:]:
        name, runs = line.split(",")
        png = np.asarray(Image.open(masks / (Path(name).stem + "_mask.png"))) // 255
        assert np.array_equal(rle.decode(runs, *png.shape), png), name
    assert len({line.split(",")[0] for line in lines[1:]}) == len(lines) - 1
    return len(lines) - 1


def kill_and_resume(args, paths: list[Path], reference: Path) -> dict:
    """A run killed with SIGKILL after a random 10-80% of the reference's time, then rerun."""
    out = args.out / "killed"
    shutil.rmtree(out, ignore_errors=True)
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"{p}\n" for p in paths))
    cmd = [sys.executable, "-m", "tools.predict_bench", str(args.out), "--worker", "rle",
           "--list", str(listing), "--worker-out", str(out), "--batch-size", str(args.batch_size)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    victim = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait = random.uniform(0.1, 0.8) * args.reference_seconds + 5   # + start-up
    time.sleep(wait)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    csv = out / "submission.csv"
    rows_at_kill = csv.read_text().count("\n") - 1 if csv.exists() else 0
    rerun = json.loads(subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1])
    return {"killed_after_s": round(wait, 1), "rows_at_kill": rows_at_kill,
            "rerun_predicted": rerun["images"],
            "identical_to_uninterrupted": csv.read_bytes() == reference.read_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.predict_bench", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--features", type=lambda s: [int(x) for x in s.split(",")],
                        default=[16, 32, 64, 128])
    parser.add_argument("--size", type=lambda s: [int(x) for x in s.split(",")], default=[128, 192])
    parser.add_argument("--kill", action="store_true")
    parser.add_argument("--spark", action="store_true", help="also engine=spark on --small images")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--list", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", dest="out_dir", help=argparse.SUPPRESS)
    parser.add_argument("--latency-images", type=int, default=21, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.out = args.out_dir
        return worker(args)
    started = time.perf_counter()
    paths = generate(args.out / "images", args.images, args.scenes)
    print(f"{len(paths)} images ready ({time.perf_counter() - started:.0f} s)", flush=True)
    report: dict = {"latency": measure(args, "latency", paths, args.out / "latency")}
    print(f"single image: {report['latency']}", flush=True)
    for fmt in ("rle", "png"):
        for n in (args.small, args.images):
            key = f"{fmt}_{n}"
            report[key] = measure(args, fmt, paths[:n], args.out / key)
            print(f"{key}: {report[key]}", flush=True)
    big = args.out / f"rle_{args.images}" / "submission.csv"
    report["rle_rows_equal_png_masks"] = check_rle_equals_png(big, args.out / f"png_{args.images}")
    print(f"rows checked against the PNG masks: {report['rle_rows_equal_png_masks']}", flush=True)
    if args.spark:
        report["spark_small"] = measure(args, "spark", paths[:args.small], args.out / "spark")
        report["spark_rows_equal_local"] = ((args.out / "spark" / "submission.csv").read_bytes()
                                            == (args.out / f"rle_{args.small}" / "submission.csv")
                                            .read_bytes())
        print(f"spark (local[*], {args.small} images): {report['spark_small']}, same CSV as the "
              f"local engine: {report['spark_rows_equal_local']}", flush=True)
    if args.kill:
        args.reference_seconds = report[f"rle_{args.images}"]["seconds"]
        report["kill_resume"] = kill_and_resume(args, paths, big)
        print(f"kill -9 and rerun: {report['kill_resume']}", flush=True)
    for fmt in ("rle", "png"):
        small, large = report[f"{fmt}_{args.small}"], report[f"{fmt}_{args.images}"]
        report[f"{fmt}_rss_ratio"] = large["peak_rss_mb"] / small["peak_rss_mb"]
        print(f"{fmt}: {args.small} images {small['images_per_s']:.1f} img/s "
              f"{small['peak_rss_mb']:.0f} MB | {args.images} images "
              f"{large['images_per_s']:.1f} img/s {large['peak_rss_mb']:.0f} MB | RSS ratio "
              f"{report[f'{fmt}_rss_ratio']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
