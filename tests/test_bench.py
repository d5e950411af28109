"""bench.py on tiny shapes: the pieces run and count what they should. Speed itself is not asserted."""
import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import bench
import colorize_base as cb
from models import build_generator

TINY = {**cb.CONSTANTS, "NGF": 8, "NDF": 8, "N_DOWNS": 5}


def test_bench_train_reports_throughput_flops_and_memory():
    r = bench.bench_train(TINY, 32, 2, steps=1, warmup=1, device_name="cpu")
    assert r["size"] == 32 and r["batch"] == 2
    assert r["images_per_s"] > 0 and r["step_s_median"] > 0 and r["data_wait_s_per_step"] >= 0
    assert r["flops_per_step"] > 0 and r["peak_memory_bytes"] > 0


def test_training_flops_grow_with_the_batch():
    one = bench.bench_train(TINY, 32, 1, steps=1, warmup=1, device_name="cpu")["flops_per_step"]
    four = bench.bench_train(TINY, 32, 4, steps=1, warmup=1, device_name="cpu")["flops_per_step"]
    assert four == pytest.approx(4 * one, rel=0.01)


def test_inference_flops_are_the_generator_forward():
    netG = build_generator(TINY).eval().requires_grad_(False)
    with FlopCounterMode(display=False) as counter:
        netG(torch.zeros(1, 1, 32, 32))
    r = bench.bench_infer(TINY, [32], repeats=1, warmup=0, device_name="cpu", render_size=256)[0]
    assert r["render_px"] == 32 and r["latency_s_median"] > 0
    # plus the two 3x3 colour matrices per pixel of the Lab conversions, counted as matmuls
    assert counter.get_total_flops() <= r["flops"] <= counter.get_total_flops() + 3 * 2 * 9 * 32 * 32


def test_max_batch_estimate_is_linear_in_the_batch():
    points = [(2, 5 * bench.GB), (8, 8 * bench.GB)]  # 4 GB fixed + 0.5 GB per image
    assert bench.max_batch_estimate(points, 16 * bench.GB) == 24
    assert bench.max_batch_estimate(points[:1], 16 * bench.GB) is None


def test_run_isolated_returns_the_result_and_names_a_failure():
    assert np.array_equal(bench.run_isolated(bench.synthetic_photo, 4), bench.synthetic_photo(4))
    with pytest.raises(RuntimeError, match="multiples of 32"):
        bench.run_isolated(bench.bench_train, TINY, 48, 1, 1, 0, "cpu")


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--ngf", "8", "--ndf", "8", "--sizes", "64", "--batches", "1,2", "--steps", "1",
                       "--infer-sizes", "64", "--repeats", "1", "--data", "", "--no-isolate", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "matmul" in text and "largest batch within 16 GB" in text and "median ms" in text
    report = json.loads(out.read_text())
    assert [(r["size"], r["batch"]) for r in report["train"]] == [(64, 1), (64, 2)]
    assert report["machine"]["cores"] > 0 and report["machine"]["torch"] == torch.__version__


def test_main_rejects_sizes_the_generator_cannot_take(capsys):
    assert bench.main(["--sizes", "100", "--no-isolate"]) == 2
    assert "--sizes" in capsys.readouterr().err


def test_compare_of_an_exact_change_gives_equal_first_step_losses():
    """Channels-last only changes the memory layout: both paths start alike and their first step's
    losses agree to float tolerance, while both are timed."""
    r = bench.compare_train(TINY, {"CHANNELS_LAST": (False, True), "AMP": ("off", "off")}, 32, 2, steps=1,
                            warmup=1, device_name="cpu")
    assert r["max_loss_difference"] < 1e-4 and len(r["images_per_s"]) == 2 and min(r["images_per_s"]) > 0
    assert r["compute"] == ["float32", "float32"]
    inexact = bench.compare_train(TINY, {"FM_FROM_D_STEP": (False, True), "AMP": ("off", "off")}, 32, 2, steps=1,
                                  warmup=1, device_name="cpu")
    assert inexact["max_loss_difference"] > 0  # the feature-matching targets differ: D before / after its update


def test_compare_times_inference_of_both_networks():
    r = bench.compare_infer(TINY, {"NGF": (8, 16)}, [(32, 48), (64, 64)], repeats=1, device_name="cpu", render_size=32)
    assert set(r) == {"32x48", "64x64"} and all(len(v) == 2 and min(v) > 0 for v in r.values())


def test_bench_times_the_step_that_training_runs(monkeypatch):
    """The benchmark's step is training.step itself (hints, EMA warm-up and all), not a copy."""
    calls = []
    real = bench.training.step
    monkeypatch.setattr(bench.training, "step", lambda *a, **k: calls.append(a[2]["HINT_INPUT"]) or real(*a, **k))
    bench.bench_train({**TINY, "HINT_INPUT": True}, 32, 2, steps=1, warmup=1, device_name="cpu")
    assert calls == [True, True]


def test_compare_and_set_arguments_are_typed_like_the_command_line():
    assert bench.parse_changes(["amp=off,bf16", "CHANNELS_LAST=false,true"]) == \
        {"AMP": ("off", "bf16"), "CHANNELS_LAST": (False, True)}
    assert bench.parse_changes(["LR_G=1e-3"], n_values=1) == {"LR_G": (1e-3,)}
    for bad in (["NO_SUCH=1,2"], ["AMP=off"], ["CHANNELS_LAST=maybe,true"]):
        with pytest.raises(ValueError):
            bench.parse_changes(bad)


def test_convolution_rate_and_profile_run_on_tiny_shapes():
    rates = bench.conv_flops_per_s(torch.device("cpu"), torch.float32, repeats=1, shape=(1, 4, 8, 8))
    assert rates["forward"] > 0 and rates["forward_backward"] > 0
    table = bench.profile_train({**TINY, "AMP": "off"}, 32, 2, "cpu")
    assert "convolution" in table and "Self CPU" in table


def test_film_bench_runs_a_synthetic_clip_at_its_frame_rate(tmp_path, weights):
    pytest.importorskip("av")
    r = bench.bench_film(weights, 64, 48, 6, 32, str(tmp_path), fps=3)
    assert r["frames"] == 6 and r["fps"] == 3 and r["frames_per_s"] > 0 and r["rss_peak_bytes"] > 0
    assert "6 frames (2.0 s at 3 fps)" in bench.format_film([r], bench.machine_info(torch.device("cpu")))
