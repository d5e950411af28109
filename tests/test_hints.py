"""Colour hints: encoding points and colours into the generator's hint planes, the simulated hints
of training, zero hints = the automatic colorizer, hints files through --infer and --eval."""
import json
import os

import numpy as np
import pytest
import torch

from backends import TorchNetwork
from checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from colorizer import Colorizer, spread_hints
from conftest import make_photos, photo, run_cli, tiny_cfg, tiny_checkpoint, train_args
from data import simulate_hints
from hints import HintError, check_hints, hint_planes, hints_json, parse_color, read_hints, sidecar_path
from images import AB_SCALE, rgb_to_lab
from models import build_generator, with_new_branches


def ab_of(hex_colour):
    rgb = np.array(parse_color(hex_colour), np.float32).reshape(1, 3, 1, 1)
    return rgb_to_lab(rgb)[0, 1:, 0, 0] / AB_SCALE


def test_parse_color():
    assert parse_color("#ff8000") == (1.0, 128 / 255, 0.0)
    assert parse_color((255, 0, 51)) == (1.0, 0.0, 0.2)
    for bad in ("red", "#ff80", "#gg0000", (1, 2), (0, 0, 256), (True, 0, 0), None):
        with pytest.raises(HintError, match="colour must be"):
            parse_color(bad)


def test_hint_planes_put_the_colour_ab_and_the_mask_at_the_scaled_point():
    # a 400 x 200 photo seen at 100 x 50: the point (201, 99) lands on render pixel (50, 24)
    planes = hint_planes([(201, 99, "#c02020")], W=400, H=200, w=100, h=50)
    assert planes.shape == (1, 3, 50, 100)
    mask = planes[0, 2]
    assert mask.sum() == 9 and mask[23:26, 49:52].all()                   # a 3 x 3 square around it
    assert np.allclose(planes[0, :2, 24, 50], ab_of("#c02020"), atol=1e-6)
    assert (planes[0, :2][:, mask == 0] == 0).all()                       # nothing outside the square


def test_hint_planes_at_the_borders_are_cut_not_moved():
    planes = hint_planes([(0, 0, "#2040ff"), (399, 199, "#20ff40")], W=400, H=200, w=100, h=50)
    mask = planes[0, 2]
    assert mask[:2, :2].all() and mask[48:, 98:].all() and mask.sum() == 8   # two 2 x 2 corners
    assert np.allclose(planes[0, :2, 0, 0], ab_of("#2040ff"), atol=1e-6)
    assert np.allclose(planes[0, :2, 49, 99], ab_of("#20ff40"), atol=1e-6)


def test_hints_outside_the_photo_or_malformed_are_named():
    with pytest.raises(HintError, match=r"hint 2: x must be a pixel coordinate in \[0, 40\)"):
        check_hints([(1, 1, "#000000"), (40, 3, "#000000")], 40, 30)
    with pytest.raises(HintError, match="hint 1: y must be"):
        check_hints([(1, float("nan"), "#000000")], 40, 30)
    with pytest.raises(HintError, match="hint 1: colour must be"):
        check_hints([(1, 1, "blue")], 40, 30)
    with pytest.raises(HintError, match="hint 1: expected"):
        check_hints([(1, 1)], 40, 30)


def test_simulated_hints_carry_the_true_mean_colour_of_their_square():
    torch.manual_seed(0)
    real_B = torch.rand(8, 2, 32, 32) * 2 - 1
    planes = simulate_hints(real_B, share=1.0, geom_p=0.5, max_side=1, colour_bias=0.5)
    mask = planes[:, 2] > 0
    assert mask.flatten(1).any(1).all()                 # share 1: every image has hints
    # 1-px squares: the hint is the true ab of its pixel
    assert torch.allclose(planes[:, :2].permute(1, 0, 2, 3)[:, mask], real_B.permute(1, 0, 2, 3)[:, mask], atol=1e-6)
    none = simulate_hints(real_B, share=0.0)
    assert (none == 0).all()
    # larger squares on a constant image still carry that constant
    flat = torch.full((4, 2, 16, 16), 0.3)
    planes = simulate_hints(flat, share=1.0, max_side=9)
    assert torch.allclose(planes[:, :2][planes[:, 2:].expand(-1, 2, -1, -1) > 0], torch.tensor(0.3), atol=1e-6)


def test_zero_hints_give_exactly_the_automatic_output(tmp_path):
    auto = tiny_checkpoint(tmp_path / "auto.pt")
    cfg = load_checkpoint(auto)["cfg"]
    netG = build_generator({**cfg, "HINT_INPUT": True})
    netG.load_state_dict(with_new_branches(load_checkpoint(auto)["netG_ema"], netG))
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": {**cfg, "HINT_INPUT": True}, "step": 0,
                     "netG_ema": netG.state_dict()}, str(tmp_path / "hint.pt"))
    img = photo(70, 50, 3)
    automatic = np.asarray(Colorizer.load(auto, "cpu").colorize(img))
    hinted = Colorizer.load(tmp_path / "hint.pt", "cpu")
    assert hinted.takes_hints
    for hints in (None, []):  # no hints: the automatic model's output, pixel for pixel
        assert np.array_equal(np.asarray(hinted.colorize(img, hints=hints)), automatic)
    with pytest.raises(HintError, match="takes no colour hints"):
        Colorizer.load(auto, "cpu").colorize(img, hints=[(1, 1, "#ff0000")])


def test_hints_reach_the_network_in_its_own_scale_so_the_saturation_gain_gives_them_back(tmp_path):
    cfg = {**load_checkpoint(tiny_checkpoint(tmp_path / "auto.pt"))["cfg"], "HINT_INPUT": True}
    netG = build_generator(cfg).eval()
    seen = []
    netG.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    colorizer = Colorizer(TorchNetwork(netG, cfg, torch.device("cpu")), render_size=64)
    hints = [(30, 20, "#c02020")]
    for saturation in (1.0, 1.45):
        colorizer.colorize(photo(70, 50, 3), hints=hints, saturation=saturation)
    plain, scaled = seen
    assert torch.allclose(scaled[:, :2] * 1.45, plain[:, :2], atol=1e-6)  # the colour, divided by the gain
    assert torch.equal(scaled[:, 2], plain[:, 2]) and plain[:, 2].sum() > 0  # the mask unchanged


def test_init_adds_zero_hint_inputs_to_an_automatic_model_and_training_uses_them(tmp_path):
    data = make_photos(tmp_path / "data")
    auto = tiny_checkpoint(tmp_path / "auto.pt")
    cfg = tiny_cfg(data, tmp_path / "run", 1, "--init", auto, "--hint-input", "true", "--hint-share", "1")
    import colorize_base as cb
    os.makedirs(cfg["RUN_DIR"])
    cfg, state = cb.start_state(cfg, os.path.join(cfg["RUN_DIR"], "checkpoint.pt"), False, 0,
                                torch.device("cpu"), lambda m: None)
    assert state.netG.hint_channels == 3 and (state.netG.hint_in.weight == 0).all()
    assert state.optG.param_groups[1]["lr"] == cfg["LR_G"] * cfg["HINT_LR_MULT"]  # the new branch learns faster
    p = run_cli(*train_args(data, tmp_path / "run", 3, "--init", auto, "--hint-input", "true", "--hint-share", "1"))
    assert p.returncode == 0, p.stderr
    assert "with new branches starting at zero: hint_in" in p.stdout
    tuned = load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert tuned["cfg"]["HINT_INPUT"] is True
    assert tuned["netG"]["hint_in.weight"].abs().sum() > 0  # the hint branch learned something


def test_hints_file_and_sidecars_through_infer(tmp_path):
    data = make_photos(tmp_path / "data", n=3, size=(40, 30))
    hint_model = tiny_checkpoint(tmp_path / "hint.pt", HINT_INPUT=True)
    good = tmp_path / "good.hints.json"
    good.write_text(hints_json([(5, 5, "#ff0000"), (30, 20, (0, 0, 255))]))
    assert read_hints(str(good)) == [(5, 5, "#ff0000"), (30, 20, "#0000ff")]
    p = run_cli("--infer", os.path.join(data, "p0.png"), "--hints", good, "--weights", hint_model,
                "--out", tmp_path / "one", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    # batch: p0 has a good sidecar, p1 a malformed one, p2 a point outside the photo; p0 is still written
    (tmp_path / "data" / "p0.hints.json").write_text(good.read_text())
    (tmp_path / "data" / "p1.hints.json").write_text('{"hints": [{"x": 1, "y": 2}]}')
    (tmp_path / "data" / "p2.hints.json").write_text(json.dumps({"hints": [{"x": 99, "y": 2, "color": "#ffffff"}]}))
    p = run_cli("--infer", data, "--weights", hint_model, "--out", tmp_path / "many", "--device", "cpu")
    assert p.returncode == 1
    assert sorted(os.listdir(tmp_path / "many")) == ["p0.png"]
    assert f"{sidecar_path(os.path.join(data, 'p1.png'))}: hint 1: expected an object with x, y and color" in p.stderr
    assert f"{sidecar_path(os.path.join(data, 'p2.png'))}: hint 1: x must be a pixel coordinate in [0, 40)" in p.stderr
    # a hints file that is not JSON, and --hints with several photos
    (tmp_path / "bad.json").write_text("{not json")
    p = run_cli("--infer", os.path.join(data, "p0.png"), "--hints", tmp_path / "bad.json", "--weights", hint_model,
                "--out", tmp_path / "x", "--device", "cpu")
    assert p.returncode == 1 and f"{tmp_path / 'bad.json'}: not a valid JSON hints file" in p.stderr
    p = run_cli("--infer", data, "--hints", good, "--weights", hint_model, "--out", tmp_path / "x", "--device", "cpu")
    assert p.returncode == 2 and "is for one photo, got 3" in p.stderr


def test_eval_reveals_hints_with_a_fixed_seed(tmp_path):
    data = make_photos(tmp_path / "data", n=3, size=(40, 30))
    hint_model = tiny_checkpoint(tmp_path / "hint.pt", HINT_INPUT=True)
    outs = []
    for k in range(2):
        p = run_cli("--eval", data, "--hints", 5, "--weights", hint_model, "--out", tmp_path / f"e{k}", "--device", "cpu")
        assert p.returncode == 0, p.stderr
        assert "5 true-colour hints each" in p.stdout
        outs.append(json.loads((tmp_path / f"e{k}" / "summary.json").read_text()))
    assert outs[0]["hints"] == 5 and outs[0]["ours"] == outs[1]["ours"]
    p = run_cli("--eval", data, "--hints", "many", "--weights", hint_model, "--out", tmp_path / "e", "--device", "cpu")
    assert p.returncode == 2 and "whole number of hints" in p.stderr
    auto = tiny_checkpoint(tmp_path / "auto.pt")
    p = run_cli("--eval", data, "--hints", 5, "--weights", auto, "--out", tmp_path / "e", "--device", "cpu")
    assert p.returncode == 2 and "takes no colour hints" in p.stderr


def test_eval_hints_are_true_colours_at_points_that_map_back_to_their_render_pixel():
    from evaluate import hints_from_truth
    truth = np.zeros((300, 500, 3), np.float32)
    truth[:, :250] = (0.8, 0.2, 0.1)   # left half red-brown, right half blue
    truth[:, 250:] = (0.1, 0.3, 0.9)
    hints = hints_from_truth(truth, 20, np.random.default_rng(0), render_size=100)
    assert len(hints) == 20 and len({(x, y) for x, y, _ in hints}) == 20
    for x, y, colour in hints:
        assert 0 <= x < 500 and 0 <= y < 300
        if abs(x - 250) > 10:  # away from the edge the colour is the half's own
            want = (0.8, 0.2, 0.1) if x < 250 else (0.1, 0.3, 0.9)
            assert np.allclose(parse_color(colour), want, atol=1 / 255), (x, colour)
        planes = hint_planes([(x, y, colour)], 500, 300, 100, 60, side=1)
        assert planes[0, 2, y * 60 // 300, x * 100 // 500] == 1   # the render pixel it was drawn from


class GrayNetwork:
    """A stand-in hint network that answers gray (ab 0) whatever the hints: what is left of a hint
    in the output then comes from spread_hints alone."""
    multiple, hint_channels, cfg, threads = 1, 3, {}, 1

    def __call__(self, L, hints=None):
        return np.zeros((L.shape[0], 2, *L.shape[2:]), np.float32)


def test_a_hint_holds_where_it_is_put_and_spreads_over_things_as_light_not_across_an_edge():
    gray = np.full((64, 96), 60, np.uint8)
    gray[:, 48:] = 200                             # a dark left half, a light right one
    red = ab_of("#b03030") * AB_SCALE
    spread, alone = (np.asarray(Colorizer(GrayNetwork(), render_size=96, hint_spread=s)
                                .colorize(gray, hints=[(20, 32, "#b03030")])) for s in (0.125, 0))
    ab = rgb_to_lab(spread.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 1:]
    assert np.abs(rgb_to_lab(alone.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 1:]).max() < 1  # off: gray
    assert np.abs(ab[:, 32, 20] - red).max() < 3   # the hinted colour at the hint (8-bit, dark: a few units)
    assert ab[0, 32, 40] > 0.8 * red[0]            # 20 px on, on the same dark thing: nearly all of it
    assert ab[0, 32, 56] < 0.1 * red[0]            # past the edge, on the light half, as near: hardly any
    assert ab[0, 4, 4] > 0.3 * red[0]              # the far corner of the dark half: some, fading


def test_the_spread_cost_does_not_grow_with_the_number_of_hints():
    rng = np.random.default_rng(0)
    L = rng.uniform(-1, 1, (1, 1, 128, 160)).astype(np.float32)
    ab = np.zeros((1, 2, 128, 160), np.float32)
    planes = np.zeros((1, 3, 128, 160), np.float32)
    planes[0, :2] = 0.3
    planes[0, 2] = 1                # every pixel hinted: still summed on a grid of 64 cells a side
    out = spread_hints(L, planes, ab, 0.125)
    assert out.shape == ab.shape and np.allclose(out, 0.3, atol=0.01)  # each pixel its hint, all but the damping
    assert spread_hints(L, np.zeros_like(planes), ab, 0.125) is ab  # no hints: the network's answer
