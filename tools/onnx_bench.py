"""CPU inference runtimes side by side (issue 21): torch eager fp32, torch bf16 (where the CPU
has bf16), ONNX Runtime fp32 and ONNX Runtime int8, for the CPU plan's U-Net (features
8..64 at 128x192: what the quick start's plan trains on a 2-core CPU of either kind) and the
seed-size one (64..512 at 160x240).

    python -m tools.onnx_bench OUT [--images 24] [--train_steps 60,20] [--models cpu,seed]
    python -m tools.onnx_bench OUT --model cpu=models:/NAME/1 --model seed=models:/SEED/1

Generates a Carvana-like folder (tools.datasets: 1918x1280 dusk cars) under OUT/data, its
first two thirds of the cars for training and calibration, the rest for the test; trains each
model briefly in-process (`--train_steps` Adam steps, batch 8, one count per model: enough
for the int8-vs-fp32 Dice difference to mean something, not a quality run; 0 leaves the
weights untrained, for speed figures alone), or takes it from a model the pipeline trained and
logged (`--model NAME=URI`: its weights, input size, scale and window; the Dice figures
that mean something); exports it (unet.inference.onnx_runtime.export)
and quantizes it (quantize_int8, calibrated on the training images). Then each runtime is
measured in a fresh process (its own peak RSS): single-image latency of a 1918x1280 image end
to end (resize, network, resize back; median of `--repeats`), throughput of the network on
batches of 8 at the model's size (images/s, best of `--repeats`), and the test Dice at full
resolution (unet.evaluation.scoring.evaluate_pairs, as evaluate scores). The throughput is measured
again with all runtimes taking turns in one process (`interleaved`): the ratios to quote on a
shared machine. Writes OUT/onnx_bench.json
and OUT/onnx_bench.md (the table of docs/onnx.md) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"cpu": ((8, 16, 32, 64), (128, 192)), "seed": ((64, 128, 256, 512), (160, 240))}
RUNTIMES = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")


def cpu_flags() -> str:
    """The CPU's model name and the flags that matter here (AVX2/AVX-512/VNNI/BF16/AMX)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
              "amx_int8")
    return f"{name}; {' '.join(f for f in wanted if f in flags)}"


def split_folder(data: Path):
    from unet.data.pairs import Pair
    images = sorted((data / "train").glob("*.jpg"))
    pairs = [Pair(p.stem, p, data / "train_masks" / f"{p.stem}_mask.gif") for p in images]
    cut = (len(pairs) * 2 // 3) // 4 * 4        # whole cars (4 views each) on each side
    return pairs[:cut], pairs[cut:]


def train(features, size, train_pairs, steps: int, seed: int = 0):
    """A briefly trained UNet (bce + Adam at 2e-3, batch 8, flips), fp32 weights."""
    from unet.data.pairs import load_mask
    from unet.images.reading import load_image
    from unet.images.transforms import resize_image, resize_mask, to_input
    from unet.network.model import UNet
    from unet.network.precision import choose_precision
    torch.manual_seed(seed)
    x = torch.from_numpy(to_input(np.stack([resize_image(load_image(p.image, size), size)
                                            for p in train_pairs])))
    y = torch.from_numpy(np.stack([resize_mask(load_mask(p.mask), size)
                                   for p in train_pairs])).float()[:, None]
    model = UNet(features=features)
    precision = choose_precision("auto", "cpu")
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(steps):
        pick = torch.randint(0, len(x), (8,))
        xb, yb = x[pick], y[pick]
        if torch.rand(()) < 0.5:
            xb, yb = xb.flip(3), yb.flip(3)
        with precision.context():
            logits = model(xb).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def logged(uri: str) -> dict:
    """The Segmenter state (unet.inference.segmenter.Segmenter.to_state) of a logged model, fp32
    weights."""
    from unet.tracking import models
    return models.load_segmenter(uri, "torch").to_state()


def prepare(out: Path, images: int, steps: list[int], names: list[str],
            uris: dict[str, str]) -> dict:
    from tools.datasets import carvana_folder
    from unet.images.reading import load_image
    from unet.inference import onnx_runtime
    from unet.inference.segmenter import Segmenter
    data = out / "data"
    if not (data / "train").is_dir() or len(list((data / "train").glob("*.jpg"))) < images:
        carvana_folder(data, images, seed=2026)
    train_pairs, _ = split_folder(data)
    made = {}
    for name, count in zip(names, steps):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        if name in uris:
            state = logged(uris[name])
            # Test-time flips (the pipeline's `tta`) would double every runtime's time alike;
            # the bench times the network once per image.
            state["tta"] = "none"
            made[name] = {"model_uri": uris[name], "features": state["features"],
                          "image_size": state["image_size"]}
        else:
            features, size = MODELS[name]
            start = time.perf_counter()
            model = train(features, size, train_pairs, count)
            made[name] = {"train_steps": count,
                          "train_seconds": round(time.perf_counter() - start, 1)}
            state = Segmenter(model, size, choose_fp32()).to_state()
        torch.save(state, folder / "model.pt")
        size = tuple(state["image_size"])
        model = Segmenter.from_state(state, choose_fp32()).model
        onnx_runtime.export(model, folder / "fp32.onnx", size)
        onnx_runtime.quantize_int8(folder / "fp32.onnx", folder / "int8.onnx",
                                   [load_image(p.image) for p in train_pairs], size)
    return made


def choose_fp32():
    from unet.network.precision import choose_precision
    return choose_precision("fp32", "cpu")


def segmenter_for(folder: Path, runtime: str):
    from unet.inference import onnx_runtime
    from unet.inference.segmenter import Segmenter
    from unet.network.precision import choose_precision
    state = torch.load(folder / "model.pt", weights_only=True)
    precision = choose_precision("bf16" if runtime == "torch-bf16" else "fp32", "cpu")
    segmenter = Segmenter.from_state(state, precision)
    if runtime.startswith("onnx"):
        file = folder / ("int8.onnx" if runtime == "onnx-int8" else "fp32.onnx")
        segmenter = onnx_runtime.OnnxSegmenter(segmenter, file, runtime)
        # The torch weights are not needed to run: dropped, so RSS is the session's. The
        # network's depth (Segmenter.step: the multiple inputs are padded to) stays.
        segmenter.model = SimpleNamespace(features=segmenter.model.features)
    return segmenter


def measure(out: Path, name: str, runtime: str, repeats: int, dice: bool = True) -> dict:
    """One runtime of one model, in this process: latency, throughput, Dice (unless not
    `dice`: NaN), peak RSS."""
    from PIL import Image

    from unet.evaluation.scoring import evaluate_pairs
    from unet.inference.onnx_runtime import seconds_per_batch
    segmenter = segmenter_for(out / name, runtime)
    _, test_pairs = split_folder(out / "data")
    with Image.open(test_pairs[0].image) as image:
        photo = np.asarray(image.convert("RGB"))          # 1280x1918
    next(segmenter.probabilities([photo]))                # warm-up
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        next(segmenter.probabilities([photo]))
        latencies.append(time.perf_counter() - start)
    best = seconds_per_batch(segmenter, 8, repeats)
    # Peak RSS of inference (libraries, weights or session, one photo), before the test set
    # is read at full resolution.
    rss = peak_rss_mb()
    dice = evaluate_pairs(segmenter, test_pairs, 0.5, 8)["dice"] if dice else float("nan")
    return {"model": name, "runtime": runtime, "latency_ms": 1000 * statistics.median(latencies),
            "images_per_s": 8 / best, "dice": dice, "peak_rss_mb": rss}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB. Not getrusage's ru_maxrss: Linux
    carries that over from the parent across fork and exec, so each measuring process would
    report at least the bench's own peak (every runtime alike, as a run of 2026-12-01 did)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def interleaved(out: Path, name: str, runtimes: list[str], repeats: int) -> dict[str, float]:
    """Batch-8 images/s of each runtime, timed in turns in one process (best of `repeats`
    rounds): on a shared machine a load that comes and goes hits every runtime alike, so
    their ratios hold better than those of runs minutes apart."""
    segmenters = {r: segmenter_for(out / name, r) for r in runtimes}
    size = next(iter(segmenters.values())).image_size
    batch = np.zeros((8, *size, 3), np.uint8)
    best = {r: float("inf") for r in runtimes}
    for s in segmenters.values():
        s.probabilities_resized(batch)
    for _ in range(repeats):
        for runtime, segmenter in segmenters.items():
            start = time.perf_counter()
            segmenter.probabilities_resized(batch)
            best[runtime] = min(best[runtime], time.perf_counter() - start)
    return {r: 8 / seconds for r, seconds in best.items()}


def table(rows: list[dict]) -> str:
    lines = ["| model | runtime | latency 1918x1280 (ms) | batch-8 images/s | "
             "interleaved images/s | x torch fp32 (interleaved) | peak RSS (MB) | test Dice | "
             "Dice - torch fp32 |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["runtime"] == "torch-fp32")
        lines.append(f"| {row['model']} | {row['runtime']} | {row['latency_ms']:.0f} | "
                     f"{row['images_per_s']:.1f} | {row['interleaved_images_per_s']:.1f} | "
                     f"{row['interleaved_images_per_s'] / base['interleaved_images_per_s']:.2f} | "
                     f"{row['peak_rss_mb']:.0f} | {row['dice']:.4f} | "
                     f"{row['dice'] - base['dice']:+.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--train_steps", default="60,20", help="per model, comma list")
    parser.add_argument("--models", default="cpu,seed")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=URI",
                        help="take model NAME from a logged model (e.g. cpu=models:/unet-carvana/1) "
                             "instead of training it here")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no_dice", action="store_true",
                        help="skip the test Dice (untrained weights: speed figures only)")
    parser.add_argument("--measure", nargs=2, metavar=("MODEL", "RUNTIME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.out, *args.measure, args.repeats, not args.no_dice)))
        return
    uris = dict(item.split("=", 1) for item in args.model)
    names = list(dict.fromkeys(args.models.split(",") + list(uris)))
    steps = [int(n) for n in args.train_steps.split(",")]
    made = prepare(args.out, args.images, steps + steps[-1:] * (len(names) - len(steps)), names,
                   uris)
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    rows = []
    runtimes = [r for r in RUNTIMES if bf16 or r != "torch-bf16"]
    for name in names:
        turns = interleaved(args.out, name, runtimes, args.repeats)
        for runtime in runtimes:
            result = subprocess.run(
                [sys.executable, "-m", "tools.onnx_bench", str(args.out), "--repeats",
                 str(args.repeats), "--measure", name, runtime]
                + (["--no_dice"] if args.no_dice else []),
                cwd=ROOT, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1])
                        | {"interleaved_images_per_s": turns[runtime]})
            print(json.dumps(rows[-1]), flush=True)
    report = {"cpu": cpu_flags(), "bf16": bf16, "torch_threads": torch.get_num_threads(),
              "models": made, "rows": rows}
    (args.out / "onnx_bench.json").write_text(json.dumps(report, indent=2))
    trained = ", ".join(f"{n} {m['train_steps']} steps" if "train_steps" in m
                        else f"{n} {m['model_uri']} ({'..'.join(map(str, m['features'][::3]))} "
                             f"at {'x'.join(map(str, m['image_size']))})"
                        for n, m in made.items())
    text = (f"CPU: {report['cpu']} ({torch.get_num_threads()} threads); training: {trained}"
            f"\n\n{table(rows)}\n")
    (args.out / "onnx_bench.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
