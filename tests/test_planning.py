"""The training plan: rules applied to fingerprints, values computed by hand."""
import math

import pytest

from unet.config import pipeline as config
from unet.planning.fingerprint import Fingerprint, Machine, Speed
from unet.planning.plan import make_plan

RULES = config.read_params()["plan"]
CPU = Machine("cpu", bf16=True, cores=2)
SPEED = Speed(seconds_per_step=0.2, eval_images_per_second=40.0)
# The step arithmetic by hand, at the planned width (the width rule has a test of its own).
FIXED_WIDTH = {**RULES, "min_budget_steps": 0}


def carvana(train: int, val: int) -> Fingerprint:
    return Fingerprint(train, val, 1280, 1918, foreground_fraction=0.2, small_object_px=400.0)


def plan(fp, given=None, machine=CPU, budget=5.0, speed=SPEED, rules=FIXED_WIDTH):
    calls = []

    def measure(features, patch, size, batch):
        calls.append((features, patch, size, batch))
        return speed
    return make_plan(fp, machine, budget, given or {}, rules, measure=measure), calls


def test_rules_are_the_ones_params_yaml_states():
    # The hand computations below use these values.
    assert RULES["cpu"] == {"pixels": 24576, "features": "16,32,64,128", "batch_size": 8}
    assert (RULES["lr"], RULES["min_steps"], RULES["max_passes"]) == (2e-3, 250, 100)
    assert (RULES["min_rounds"], RULES["max_rounds"], RULES["round_overhead_seconds"]) == (10, 30, 1.0)
    assert (RULES["warmup_fraction"], RULES["max_warmup"], RULES["average_fraction"]) == (0.05, 100, 0.05)
    assert (RULES["min_budget_steps"], RULES["narrower_factors"]) == (1500, [0.75, 0.5])
    assert RULES["bn_recalibration"] == 64


def test_a_tiny_folder_repeats_epochs_up_to_100_passes():
    p, calls = plan(carvana(train=40, val=12))
    v = p.values
    # sqrt(24576 / (1280 * 1918)) = 0.1000: 128.06 x 191.9 -> multiples of 16
    assert (v["image_height"], v["image_width"]) == (128, 192)
    assert v["features"] == (16, 32, 64, 128) and v["batch_size"] == 8 and v["lr"] == 2e-3
    assert (v["patch_height"], v["patch_width"]) == (128, 192)     # fits: trained whole
    assert calls == [((16, 32, 64, 128), (128, 192), (128, 192), 8)]
    # 5 steps per pass; budget: (300 - 30 * ((12 + 64) / 40 + 1)) / 0.2 = 1065 > 100 passes = 500
    # rounds: max(5, ceil(500 / 30) = 17) capped at ceil(500 / 10) = 50 -> 17; round(500/17) = 29
    assert (v["steps_per_epoch"], v["epochs"]) == (17, 29)
    assert v["warmup_steps"] == math.ceil(0.05 * 29 * 17) == 25
    assert v["patience"] == 0                          # the schedule is spent, never cut
    assert v["average_steps"] == round(0.05 * 493) == 25
    assert p.estimated_minutes == pytest.approx((493 * 0.2 + 29 * 2.9) / 60)
    assert "100 passes over the data" in p.to_text()
    # The label-quality check's cost: 100 images at the measured 40 images/s of evaluation.
    assert "evaluate scores every mask: ~2 s per 100 images" in p.to_text()


def test_a_mid_folder_fills_the_time_budget():
    p, _ = plan(carvana(train=224, val=48))
    v = p.values
    # 28 steps per pass; (300 - 30 * ((48 + 64) / 40 + 1)) / 0.2 = 930 steps < 2800
    assert (v["steps_per_epoch"], v["epochs"]) == (31, 30)        # max(28, ceil(930/30) = 31)
    assert v["warmup_steps"] == 47 and v["patience"] == 0          # ceil(46.5)
    assert p.estimated_minutes == pytest.approx((930 * 0.2 + 30 * 3.8) / 60)
    assert p.estimated_minutes <= 5
    assert "the time budget" in p.to_text()


def test_a_large_folder_validates_within_a_pass_and_never_trains_a_handful_of_steps():
    p, _ = plan(carvana(train=11200, val=2400))
    v = p.values
    # 1400 steps per pass; the budget leaves nothing after validation -> min_steps 250,
    # validated 10 times: 25 steps (200 images) per round, less than a pass.
    assert (v["steps_per_epoch"], v["epochs"]) == (25, 10)
    assert v["warmup_steps"] == 13 and v["average_steps"] == 12    # 5% of 250
    assert "over budget" in p.to_text()


def test_a_1600_image_folder_validates_10_times_and_spends_the_rest_on_steps():
    p, _ = plan(carvana(train=1120, val=240))
    v = p.values
    # a round: (240 + 64) / 40 + 1 = 8.6 s. With 30 rounds nothing would be left, but a folder
    # this size validates 10 times: (300 - 10 * 8.6) / 0.2 = 1070 steps, 107 per round.
    assert (v["steps_per_epoch"], v["epochs"]) == (107, 10)
    assert p.estimated_minutes == pytest.approx((1070 * 0.2 + 10 * 8.6) / 60)


def test_explicit_values_win_and_given_epochs_need_no_measurement():
    given = {"lr": 1e-4, "epochs": 3, "batch_size": 4, "features": (8, 16, 32, 64)}
    p, calls = plan(carvana(train=40, val=12), given)
    assert calls == [] and p.speed is None and p.estimated_minutes is None
    v = p.values
    assert (v["lr"], v["epochs"], v["batch_size"], v["features"]) == (1e-4, 3, 4, (8, 16, 32, 64))
    assert v["steps_per_epoch"] == 10                  # one pass: ceil(40 / 4)


def test_small_objects_keep_their_size_and_one_given_side_keeps_the_aspect():
    cells = Fingerprint(64, 16, 256, 320, foreground_fraction=0.1, small_object_px=12.0)
    p, _ = plan(cells)
    # the pixel budget would give scale 0.548 (objects 6.6 px); 8 / 12 = 0.667 instead:
    # 170.7 x 213.3 -> 176 x 208
    assert (p.values["image_height"], p.values["image_width"]) == (176, 208)
    # 36608 pixels > 24576: trained on crops of ~24576 pixels with the aspect 208 / 176:
    # sqrt(24576 / 1.1818) = 144.2 -> 144; 144 * 1.1818 = 170.2 -> 176
    assert (p.values["patch_height"], p.values["patch_width"]) == (144, 176)
    p, calls = plan(carvana(40, 12), {"image_height": 256})
    assert (p.values["image_height"], p.values["image_width"]) == (256, 384)
    assert (p.values["patch_height"], p.values["patch_width"]) == (256, 384)   # as chosen
    assert calls[0][1:3] == ((256, 384), (256, 384))


def test_the_gpu_rules_and_the_batch_for_several_processes():
    gpu = Machine("cuda", bf16=True, cores=16, gpu_memory_gb=80)
    p, _ = plan(carvana(train=2000, val=400), machine=gpu)
    assert p.values["features"] == (32, 64, 128, 256) and p.values["batch_size"] == 16
    assert p.values["lr"] == pytest.approx(2e-3 * math.sqrt(2))
    assert (p.values["image_height"], p.values["image_width"]) == (256, 384)
    few = make_plan(carvana(train=9, val=3), CPU, 5.0, {"epochs": 1}, RULES, nproc=3)
    assert few.values["batch_size"] == 6            # min(8, 9 // 2) = 4, up to a multiple of 3


def test_a_slow_machine_trains_a_narrower_network():
    """30 steps per pass, rounds of (12 + 64) / 40 + 1 = 2.9 s. At 0.5 s per step at features
    16..128 the budget settles at 501 steps ((300 - 30 * 2.9) / 0.5 = 426 -> 14 rounds -> 518
    -> 17 rounds -> 501): fewer than min_budget_steps (1500). Features x0.75 = 12..96 cost
    0.5 * 0.75^2 = 0.28125 s: 788 steps, still fewer; x0.5 = 8..64 cost 0.125 s:
    (300 - 30 * 2.9) / 0.125 = 1704 steps (30 rounds of 57) >= 1500, kept."""
    calls = []

    def measure(features, patch, size, batch):
        calls.append(features)
        # a step costs the square of the width; the probe found NCHW faster here
        return Speed(0.5 * (features[0] / 16) ** 2, 40.0, channels_last=False)
    p = make_plan(carvana(train=240, val=12), Machine("cpu", False, 2), 5.0, {}, RULES,
                  measure=measure)
    v = p.values
    assert calls == [(16, 32, 64, 128), (12, 24, 48, 96), (8, 16, 32, 64)]
    assert v["features"] == (8, 16, 32, 64)
    assert (v["image_height"], v["image_width"]) == (128, 192)      # the input is kept
    assert (v["patch_height"], v["patch_width"]) == (128, 192)
    assert (v["epochs"], v["steps_per_epoch"]) == (30, 57)
    assert v["memory_format"] == "contiguous"
    assert ("width: fewer than 1500 steps in the budget at the planned features; features "
            "tried: 16,32,64,128: 501 (500 ms a step); 12,24,48,96: 788 (281 ms a step); "
            "8,16,32,64: 1704 (125 ms a step)") in p.to_text()
    # A fast machine keeps the planned width: (300 - 87) / 0.1 = 2130 steps >= 1500.
    fast, calls = plan(carvana(train=240, val=12), speed=Speed(0.1, 40.0), rules=RULES)
    assert fast.values["features"] == (16, 32, 64, 128)
    assert calls == [((16, 32, 64, 128), (128, 192), (128, 192), 8)]
    assert fast.values["memory_format"] == "channels_last"
    # Widths the user gave are never changed; nor where all a small folder needs (100 passes)
    # fits the budget.
    given = make_plan(carvana(train=240, val=12), Machine("cpu", False, 2), 5.0,
                      {"features": (16, 32, 64, 128)}, RULES, measure=measure)
    assert given.values["features"] == (16, 32, 64, 128)
    small = make_plan(carvana(train=16, val=4), Machine("cpu", False, 2), 5.0, {}, RULES,
                      measure=measure)
    assert small.values["features"] == (16, 32, 64, 128)     # 100 passes x 2 steps = 200 -> 250


def test_large_scans_with_small_objects_are_capped_by_memory_and_trained_on_crops():
    scans = Fingerprint(40, 10, 6000, 8000, foreground_fraction=0.01, small_object_px=6.0)
    machine = Machine("cpu", bf16=True, cores=2, memory_gb=16)
    p, calls = plan(scans, machine=machine)
    v = p.values
    # By pixels: objects of 6 px keep 8 px only at 8/6 > 1, so full size, 6000 x 8000.
    # By memory: a batch of 8 whole inputs at 40 x 16 = 640 bytes a pixel in a quarter of
    # 16 GB: 4 GiB / 5120 = 838,860 pixels; factor sqrt(838860 / 48e6) = 0.1322:
    # 793.2 x 1057.6 -> 784 x 1056 (multiples of 16, rounded down); 40 + 10 images at 4
    # bytes a pixel would allow 21.5 M.
    assert (v["image_height"], v["image_width"]) == (784, 1056)
    assert 784 * 1056 <= 4 * 2**30 // 5120
    # Trained on crops of the CPU's 24576 pixels at that scale: aspect 1.347,
    # sqrt(24576 / 1.347) = 135.1 -> 128; 128 x 1.347 = 172.4 -> 176.
    assert (v["patch_height"], v["patch_width"]) == (128, 176)
    # The probe never allocates a batch at full size: crops for steps, the capped whole input.
    assert calls == [((16, 32, 64, 128), (128, 176), (784, 1056), 8)]
    text = p.to_text()
    assert "input    784x1056 (trained on 128x176 crops)" in text
    assert ("capped by memory: a batch of 8 whole inputs at 640 bytes a pixel in 25% of "
            "16 GB") in text
    assert "16 GB RAM" in text


def test_many_large_images_are_capped_by_the_ram_they_take_resized():
    # 2000 + 500 images of 3000 x 4000 with 8-px objects: kept at full size by pixels;
    # RAM: 4 GiB / (4 x 2500) = 429,496 pixels (the forward batch allows 838,860):
    # factor sqrt(429496 / 12e6) = 0.18919: 567.6 x 756.8 -> 560 x 752.
    many = Fingerprint(2000, 500, 3000, 4000, foreground_fraction=0.01, small_object_px=8.0)
    p, _ = plan(many, machine=Machine("cpu", bf16=True, cores=2, memory_gb=16))
    assert (p.values["image_height"], p.values["image_width"]) == (560, 752)
    assert "2500 images kept resized in 25% of 16 GB of RAM" in p.to_text()


def test_a_machine_of_unknown_memory_plans_as_before():
    scans = Fingerprint(40, 10, 6000, 8000, foreground_fraction=0.01, small_object_px=6.0)
    p, _ = plan(scans)                     # CPU: memory_gb 0
    assert (p.values["image_height"], p.values["image_width"]) == (6000, 8000)


def test_predict_scale_comes_from_the_masks_unless_given(tmp_path):
    import dataclasses

    from unet.data.pairs import Pair
    from unet.data.synthetic import generate
    from unet.network.precision import choose_precision
    from unet.planning.plan import configure
    photos = dataclasses.replace(carvana(40, 12), object_masks=32, framed_masks=31)
    p, _ = plan(photos, {"epochs": 2})
    assert p.values["predict_scale"] == "fit"
    assert ("  predict  fit (each image resized to the input): photos: 31 of 32 sampled masks "
            "frame their object") in p.to_text()
    p, _ = plan(photos, {"epochs": 2, "predict_scale": "native"})
    assert p.values["predict_scale"] == "native" and p.scale_why == "given (-P predict_scale)"
    assert ("  predict  native (every image at the training scale): given (-P predict_scale)"
            in p.to_text())
    # Through the train config: "auto" becomes the plan's decision, a given value stays.
    stems = generate(tmp_path, 8, 48, 72, seed=0)
    pairs = [Pair(s, tmp_path / "train" / f"{s}.jpg", tmp_path / "train_masks" / f"{s}_mask.gif")
             for s in stems]
    fixed = {"split_run_id": "x", "epochs": "1", "cache_dir": ""}
    cpu = choose_precision("fp32", "cpu")
    cfg, p = configure(fixed, pairs[:6], pairs[6:], cpu)
    assert cfg.predict_scale == "fit" and p.fingerprint.object_masks == 6
    cfg, _ = configure({**fixed, "predict_scale": "native"}, pairs[:6], pairs[6:], cpu)
    assert cfg.predict_scale == "native"
