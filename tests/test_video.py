"""Film (video.py): tiny clips made here with PyAV go through colorize_video and --infer's
colorize_files; the temporal filter and the metrics on small arrays."""
import fractions
import os

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

import video  # noqa: E402 (after the skip)
from colorizer import Colorizer, colorize_files  # noqa: E402
from files import UserError  # noqa: E402

W, H, N, FPS = 64, 48, 16, 24


def make_clip(path, n=N, size=(W, H), audio=False, fps=FPS, format=None, pix_fmt="yuv420p", cut_at=None):
    """n frames of a gray clip with a bright square moving across it (MP4, H.264), and a second of
    a 440 Hz tone (AAC) when audio; from frame cut_at on, a light background (a scene cut)."""
    w, h = size
    with av.open(str(path), "w", format=format) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if audio:
            aud = out.add_stream("aac", rate=16000)
            aud.layout = "mono"
        for i in range(n):
            img = np.full((h, w, 3), 60 if cut_at is None or i < cut_at else 170, np.uint8)
            x = 4 + 2 * i
            img[10:26, x:x + 16] = 200
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
        if audio:
            t = np.arange(16000 * n // fps) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for k in range(0, tone.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + 1024]), format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, k, fractions.Fraction(1, 16000)
                out.mux(aud.encode(frame))
            out.mux(aud.encode(None))
    return str(path)


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        n = sum(1 for _ in c.decode(v))
        return {"frames": n, "size": (v.width, v.height), "fps": v.average_rate, "audio": bool(c.streams.audio)}


@pytest.fixture(scope="module")
def colorizer(weights):
    return Colorizer.load(weights, device="cpu", render_size=32, saturation=1)


def test_output_keeps_frames_size_rate(tmp_path, colorizer):
    clip = make_clip(tmp_path / "clip.mp4")
    stats = video.colorize_video(colorizer, clip, tmp_path / "out" / "clip.mp4", progress=False)
    assert stats["frames"] == N and not stats["audio"]
    got = probe(tmp_path / "out" / "clip.mp4")
    assert got == {"frames": N, "size": (W, H), "fps": FPS, "audio": False}


def test_audio_is_copied(tmp_path, colorizer):
    clip = make_clip(tmp_path / "talk.mp4", audio=True)
    stats = video.colorize_video(colorizer, clip, tmp_path / "talk_out.mp4", progress=False)
    assert stats["audio"]
    got = probe(tmp_path / "talk_out.mp4")
    assert got["audio"] and got["frames"] == N
    with av.open(clip) as a, av.open(str(tmp_path / "talk_out.mp4")) as b:
        assert b.streams.audio[0].codec_context.name == a.streams.audio[0].codec_context.name == "aac"


def test_odd_size_is_padded_to_even(tmp_path, colorizer):
    clip = make_clip(tmp_path / "odd.mkv", n=4, size=(W - 1, H - 1), pix_fmt="yuv444p")  # x264 4:4:4 takes odd sizes
    assert probe(clip)["size"] == (W - 1, H - 1)
    video.colorize_video(colorizer, clip, tmp_path / "odd_out.mp4", progress=False)
    got = probe(tmp_path / "odd_out.mp4")
    assert got["frames"] == 4 and got["size"] == (W, H)
    assert float(got["fps"]) == pytest.approx(FPS, rel=1e-3)  # Matroska's millisecond time base rounds it


class Failing:
    """A colorizer that fails on its fifth frame."""

    def __init__(self, inner, at=5, error=RuntimeError):
        self.inner, self.at, self.n, self.error = inner, at, 0, error

    def colorize(self, rgb, hints=None):
        self.n += 1
        if self.n == self.at:
            raise self.error("boom")
        return self.inner.colorize(rgb, hints=hints)


class Counting:
    """A colorizer that counts the frames it colorizes."""

    def __init__(self, inner):
        self.inner, self.n = inner, 0

    def colorize(self, rgb, hints=None):
        self.n += 1
        return self.inner.colorize(rgb, hints=hints)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_no_partial_output_when_interrupted(tmp_path, colorizer, error):
    clip = make_clip(tmp_path / "clip.mp4")
    out_dir = tmp_path / "out"
    with pytest.raises(error):
        video.colorize_video(Failing(colorizer, error=error), clip, out_dir / "clip.mp4", progress=False)
    assert os.listdir(out_dir) == [".clip.mp4.parts"]  # neither the output nor its temporary file
    assert os.listdir(out_dir / ".clip.mp4.parts") == ["manifest.json"]  # no part was finished


def frames_and_pts(path):
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [f.to_ndarray(format="rgb24") for f in frames], [f.pts for f in frames]


def test_an_interrupted_film_resumes_from_the_last_finished_part(tmp_path, colorizer):
    clip = make_clip(tmp_path / "clip.mp4", audio=True)
    whole = video.colorize_video(colorizer, clip, tmp_path / "whole.mp4", progress=False, chunk_frames=4)
    out = tmp_path / "out" / "clip.mp4"
    with pytest.raises(RuntimeError):  # frame 11 of 16 fails: parts 0 and 1 (frames 0..7) are finished
        video.colorize_video(Failing(colorizer, at=11), clip, out, progress=False, chunk_frames=4)
    assert not out.exists()
    assert sorted(os.listdir(video.parts_folder(out))) == ["filter.npz", "manifest.json", "part_000000.mp4",
                                                           "part_000001.mp4", "pts_000000.npy", "pts_000001.npy"]
    counting = Counting(colorizer)
    stats = video.colorize_video(counting, clip, out, progress=False, chunk_frames=4)
    assert counting.n == N - 8 and stats["resumed_at"] == 8
    assert stats["frames"] == whole["frames"] == N and stats["audio"]
    assert os.listdir(out.parent) == ["clip.mp4"]  # the work folder is gone
    got, want = frames_and_pts(out), frames_and_pts(tmp_path / "whole.mp4")
    assert got[1] == want[1] == frames_and_pts(clip)[1]  # every frame at the input's timestamp
    diff = np.mean([np.abs(a.astype(int) - b).mean() for a, b in zip(got[0], want[0])])
    assert diff < 1.5, diff  # as the whole run (x264 here is not bit-exact from run to run, so not equal)
    assert probe(out) == {"frames": N, "size": (W, H), "fps": FPS, "audio": True}
    with av.open(str(out)) as a, av.open(clip) as b:
        assert a.duration == pytest.approx(b.duration, abs=0.05 * 1e6)


def test_other_settings_start_over(tmp_path, colorizer):
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "clip_out.mp4"
    with pytest.raises(RuntimeError):
        video.colorize_video(Failing(colorizer, at=11), clip, out, progress=False, chunk_frames=4)
    counting = Counting(colorizer)
    stats = video.colorize_video(counting, clip, out, strength=0.5, progress=False, chunk_frames=4)
    assert counting.n == N and stats["resumed_at"] == 0 and probe(out)["frames"] == N


def test_previous_output_survives_a_failed_run(tmp_path, colorizer):
    clip = make_clip(tmp_path / "clip.mp4")
    out = tmp_path / "clip_out.mp4"
    video.colorize_video(colorizer, clip, out, progress=False)
    before = out.read_bytes()
    with pytest.raises(RuntimeError):
        video.colorize_video(Failing(colorizer), clip, out, progress=False)
    assert out.read_bytes() == before


def test_output_never_replaces_the_input(tmp_path, colorizer):
    clip = make_clip(tmp_path / "clip.mp4")
    before = open(clip, "rb").read()
    with pytest.raises(UserError, match="also an input"):
        video.colorize_video(colorizer, clip, clip, progress=False)
    assert open(clip, "rb").read() == before


def make_bad_videos(folder):
    """Files named like videos that are not: {name: part of the expected reason}."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "empty.mp4"), "wb").close()
    good = open(make_clip(os.path.join(folder, "whole.tmpclip"), format="mp4"), "rb").read()
    os.remove(os.path.join(folder, "whole.tmpclip"))
    with open(os.path.join(folder, "truncated.mp4"), "wb") as f:
        f.write(good[: len(good) // 2])
    with av.open(os.path.join(folder, "whole.tmpclip"), "w", format="mp4", options={"movflags": "faststart"}) as out:
        vs = out.add_stream("libx264", rate=FPS)  # the index first, so the cut is in the frames' data
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            noise = np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(noise, format="rgb24")))
        out.mux(vs.encode(None))
    good = open(os.path.join(folder, "whole.tmpclip"), "rb").read()
    os.remove(os.path.join(folder, "whole.tmpclip"))
    with open(os.path.join(folder, "cut_download.mp4"), "wb") as f:
        f.write(good[: len(good) * 2 // 3])
    with open(os.path.join(folder, "text.mp4"), "w") as f:
        f.write("this is a text file, not a film\n")
    with av.open(os.path.join(folder, "sound_only.mkv"), "w") as out:  # audio, no video stream
        aud = out.add_stream("flac", rate=8000)
        aud.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 4000), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        out.mux(aud.encode(frame))
        out.mux(aud.encode(None))
    return {"empty.mp4": "empty", "truncated.mp4": "not a readable video", "text.mp4": "not a readable video",
            "sound_only.mkv": "no video stream", "cut_download.mp4": ("damaged video data", "truncated")}


def test_bad_videos_fail_by_name_and_the_batch_goes_on(tmp_path, colorizer, capsys):
    folder = tmp_path / "in"
    bad = make_bad_videos(str(folder))
    make_clip(folder / "good.mp4", n=4)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "photo.png")
    n_failed = colorize_files(colorizer, [str(folder)], str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert n_failed == len(bad)
    for name, why in bad.items():
        lines = [line for line in err.splitlines() if line.startswith(f"failed: {folder / name}:")]
        assert len(lines) == 1 and any(w in lines[0] for w in ((why,) if isinstance(why, str) else why)), (name, err)
    assert sorted(os.listdir(tmp_path / "out")) == ["good.mp4", "photo.png"]
    assert probe(tmp_path / "out" / "good.mp4")["frames"] == 4


def test_without_pyav_videos_say_how_and_photos_still_work(tmp_path, colorizer, capsys, monkeypatch):
    monkeypatch.setattr(video, "av", None)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read")
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    assert colorize_files(colorizer, [str(clip), str(tmp_path / "photo.png")], str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"failed: {clip}: " in err and "pip install -r requirements-video.txt" in err
    assert os.listdir(tmp_path / "out") == ["photo.png"]


# -----------------------------------------------------------------------------
# The temporal filter and the metrics

def lab_frames(Ls, abs_):
    return [np.concatenate([L[..., None], ab], axis=2) for L, ab in zip(Ls, abs_)]


def test_filter_lowers_flicker_on_a_still_clip_with_noise():
    rng = np.random.default_rng(0)
    L = np.full((24, 32), 50, np.float32) + rng.normal(0, 0.3, (24, 32)).astype(np.float32)
    abs_ = [np.float32([20, -10]) + rng.normal(0, 4, (24, 32, 2)).astype(np.float32) for _ in range(20)]
    alone = video.flicker(lab_frames([L] * 20, abs_))
    filt = video.TemporalFilter(0.8)
    smooth = video.flicker(lab_frames([L] * 20, [filt(L, ab) for ab in abs_]))
    assert smooth < 0.5 * alone
    off = video.TemporalFilter(0)
    assert video.flicker(lab_frames([L] * 20, [off(L, ab) for ab in abs_])) == pytest.approx(alone)


class SteadyColour:
    """A colorizer whose colour is the same on every frame: what the filter gives a still shot."""

    def colorize(self, rgb, hints=None):
        L = video.rgb_to_L(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 0]
        yy, xx = np.mgrid[:L.shape[0], :L.shape[1]]
        return Image.fromarray(video.compose(L, np.dstack([20 * np.sin(xx / 9), 25 * np.cos(yy / 7)]).astype(np.float32)))


def test_the_encoder_keeps_a_steady_colour_steady_on_a_grainy_film(tmp_path, monkeypatch):
    """A still, grainy gray shot given the same colour on every frame: x264's defaults re-add flicker
    to the chroma (its motion vectors follow the grain); X264_OPTIONS keep less of it."""
    rng, (w, h) = np.random.default_rng(0), (96, 64)
    clip = str(tmp_path / "grain.mp4")
    with av.open(clip, "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        for _ in range(24):
            gray = np.clip(np.mgrid[:h, :w][1] * 2 + 40 + rng.normal(0, 6, (h, w)), 0, 255).astype(np.uint8)
            out.mux(vs.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, 2), format="rgb24")))
        out.mux(vs.encode(None))

    def written_flicker(options, name):
        monkeypatch.setattr(video, "X264_OPTIONS", options)
        video.colorize_video(SteadyColour(), clip, tmp_path / name, progress=False)
        with av.open(str(tmp_path / name)) as c:
            return video.flicker([video.rgb_to_lab(f.to_ndarray(format="rgb24").transpose(2, 0, 1)[None] / 255.0)[0]
                                  .transpose(1, 2, 0) for f in c.decode(video=0)])
    ours = written_flicker(video.X264_OPTIONS, "ours.mp4")
    assert ours < 0.9 * written_flicker({}, "x264_defaults.mp4")


def test_moving_pixels_take_the_new_colour():
    filt = video.TemporalFilter(0.9)
    L0, L1 = np.full((16, 16), 30, np.float32), np.full((16, 16), 30, np.float32)
    L1[:4, :4] = 70  # something bright moved into the corner (too small a change to be a cut)
    filt(L0, np.zeros((16, 16, 2), np.float32))
    out = filt(L1, np.full((16, 16, 2), 40, np.float32))
    assert out[0, 0, 0] == pytest.approx(40, abs=0.1)  # moved: the new frame's colour
    assert out[15, 15, 0] == pytest.approx(4, abs=0.1)  # still: mostly the past
    assert filt.cuts == 0


def test_a_cut_resets_the_filter():
    dark, bright = np.full((16, 16), 20, np.float32), np.full((16, 16), 80, np.float32)
    red, blue = np.full((16, 16, 2), [40, 20], np.float32), np.full((16, 16, 2), [0, -40], np.float32)
    filt = video.TemporalFilter(0.95)
    for _ in range(5):
        filt(dark, red)
    assert np.array_equal(filt(bright, blue), blue) and filt.cuts == 1  # no red left after the cut
    assert not np.array_equal(filt(bright, red), red)  # within the shot, the past still counts


def test_filter_state_round_trips_through_npz(tmp_path):
    rng = np.random.default_rng(2)
    Ls = [np.full((8, 8), 50, np.float32) + rng.normal(0, 1, (8, 8)).astype(np.float32) for _ in range(10)]
    abs_ = [rng.normal(0, 10, (8, 8, 2)).astype(np.float32) for _ in range(10)]
    whole, first = video.TemporalFilter(0.8), video.TemporalFilter(0.8)
    want = [whole(L, ab) for L, ab in zip(Ls, abs_)]
    for L, ab in zip(Ls[:5], abs_[:5]):
        first(L, ab)
    np.savez(tmp_path / "state.npz", **first.state())
    second = video.TemporalFilter(0.8)
    with np.load(tmp_path / "state.npz") as state:
        second.restore(state)
    assert all(np.array_equal(second(L, ab), w) for L, ab, w in zip(Ls[5:], abs_[5:], want[5:]))


def test_cdc_and_flicker_of_identical_frames_are_zero():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    assert video.cdc([rgb] * 6) == 0
    other = np.clip(rgb.astype(int) + 40, 0, 255).astype(np.uint8)
    assert video.cdc([rgb, other] * 3) > 0.05
    lab = np.dstack([np.full((12, 16), 50.0), rng.normal(0, 10, (12, 16, 2))])
    assert video.flicker([lab] * 4) == 0


def test_infer_on_the_command_line(tmp_path, weights):
    from conftest import run_cli
    make_clip(tmp_path / "reel.mov", n=6)
    r = run_cli("--infer", tmp_path / "reel.mov", "--weights", weights, "--device", "cpu", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "colorized 1 of 1" in r.stdout
    assert probe(tmp_path / "out" / "reel.mp4")["frames"] == 6


class Recording:
    """A colorizer that takes hints and records the hints it is given for each frame."""
    takes_hints = True

    def __init__(self, inner):
        self.inner, self.hints = inner, []

    def colorize(self, rgb, hints=None):
        self.hints.append(hints)
        return self.inner.colorize(rgb)


def test_a_hint_holds_for_the_rest_of_its_shot(tmp_path, colorizer):
    import json
    clip = make_clip(tmp_path / "reel.mp4", cut_at=8)
    red, blue = {"frame": 2, "x": 10, "y": 12, "color": "#c02020"}, {"frame": 10, "x": 30, "y": 20, "color": "#2040c0"}
    (tmp_path / "reel.hints.json").write_text(json.dumps({"hints": [blue, red]}))
    recording = Recording(colorizer)
    assert colorize_files(recording, [clip], str(tmp_path / "out")) == 0
    A, B = [(10, 12, "#c02020")], [(30, 20, "#2040c0")]
    assert recording.hints == [None] * 2 + [A] * 6 + [None] * 2 + [B] * 6  # the cut at frame 8 ends the red hint
    assert probe(tmp_path / "out" / "reel.mp4")["frames"] == N


def test_a_bad_clip_hints_file_is_one_line(tmp_path, colorizer, capsys):
    clip = make_clip(tmp_path / "reel.mp4", n=4)
    (tmp_path / "reel.hints.json").write_text('{"hints": [{"x": 1, "y": 2, "color": "#ffffff"}]}')
    assert colorize_files(Recording(colorizer), [clip], str(tmp_path / "out")) == 1
    assert "reel.hints.json: hint 1: expected an object with frame, x, y and color" in capsys.readouterr().err
    (tmp_path / "reel.hints.json").write_text('{"hints": [{"frame": 1, "x": 500, "y": 2, "color": "#ffffff"}]}')
    from conftest import tiny_checkpoint
    hinted = Colorizer.load(tiny_checkpoint(tmp_path / "hinted.pt", HINT_INPUT=True), device="cpu", render_size=32)
    assert colorize_files(hinted, [clip], str(tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert f"failed: {clip}: " in err and "reel.hints.json: frame 1: " in err and "unexpected" not in err, err
    (tmp_path / "reel.hints.json").write_text('{"hints": [{"frame": 1, "x": 50, "y": 2, "color": "#ff0000"}]}')
    assert colorize_files(hinted, [clip], str(tmp_path / "out")) == 0  # a real hint-taking model follows it


def test_temporal_constant_and_eval_video_on_the_command_line(tmp_path, weights):
    import json

    import colorize_base as cb
    from conftest import photo, run_cli
    assert cb.TEMPORAL == video.TEMPORAL
    r = run_cli("--infer", make_clip(tmp_path / "reel.mp4", n=4), "--temporal", "1", "--weights", weights)
    assert r.returncode == 2 and "--temporal must be in [0, 1), got 1.0" in r.stderr
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (1, 2, 10):  # frame_10 comes last, not second
        Image.fromarray(photo(24, 16, seed=0)).save(frames / f"frame_{i}.png")
    r = run_cli("--eval", frames, "--video", "--temporal", "0.5", "--weights", weights, "--device", "cpu",
                "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["frames"] == 3 and summary["temporal"] == 0.5
    assert summary["truth"]["flicker"] == 0 and summary["truth"]["cdc"] == 0  # the same frame three times
    assert {"psnr", "ciede2000", "colorfulness", "cdc", "flicker"} <= summary["ours"].keys() == summary["alone"].keys()
    assert "flicker" in r.stdout
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == ["frame_1.png", "frame_2.png", "frame_10.png"]


def frame_folder(folder, n=6, size=(W, H)):
    """n numbered gray frames (frame_1.png ... frame_n.png: frame_10 sorts after frame_9)."""
    os.makedirs(folder, exist_ok=True)
    for i in range(1, n + 1):
        img = np.full((size[1], size[0]), 40 + 15 * i, np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"frame_{i}.png"))
    return str(folder)


def test_a_folder_of_frames_is_one_film_in_the_order_of_their_numbers(tmp_path, weights):
    from conftest import run_cli
    frames = frame_folder(tmp_path / "reel", n=11)
    r = run_cli("--infer", frames, "--video", "--frame-rate", "12.5", "--weights", weights, "--device", "cpu",
                "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "colorized 1 of 1 folders of frames" in r.stdout
    got = probe(tmp_path / "out" / "reel.mp4")
    assert got["frames"] == 11 and got["size"] == (W, H) and got["fps"] == fractions.Fraction(25, 2)
    rgb, _ = frames_and_pts(tmp_path / "out" / "reel.mp4")
    assert np.all(np.diff([f.mean() for f in rgb]) > 0)  # frame_10, frame_11 last: brightest
    assert sorted(os.listdir(tmp_path / "out")) == ["reel.mp4"]


def test_a_bad_or_odd_sized_frame_fails_its_folder_by_name_and_the_next_folder_runs(tmp_path, weights):
    from conftest import run_cli
    bad, odd, good = (frame_folder(tmp_path / name, n=3) for name in ("bad", "odd", "good"))
    with open(os.path.join(bad, "frame_2.png"), "wb") as f:
        f.write(b"not a png")
    Image.new("L", (W + 2, H)).save(os.path.join(odd, "frame_3.png"))
    r = run_cli("--infer", bad, odd, tmp_path / "missing", good, "--video", "--weights", weights, "--device", "cpu",
                "--out", tmp_path / "out")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    failed = [line for line in r.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 3 and "bad/frame_2.png" in failed[0] and "a clip needs every frame" in failed[0]
    assert "odd/frame_3.png" in failed[1] and f"unlike the {W}x{H} frames" in failed[1]
    assert "missing: not a folder" in failed[2]
    assert sorted(os.listdir(tmp_path / "out")) == ["good.mp4"]  # no part or work folder left of the others


def test_colour_frames_and_a_long_film_are_said_in_one_line_each(tmp_path, colorizer, capsys, monkeypatch):
    clip = str(tmp_path / "colour.mp4")
    with av.open(clip, "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        for i in range(6):
            img = np.zeros((H, W, 3), np.uint8)
            img[..., 0], img[..., 2] = 200, 40 + 10 * i
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode(None))
    monkeypatch.setattr(video, "LONG_FILM_S", 0)  # any film is long: the estimate is said after 3 frames
    video.colorize_video(colorizer, clip, tmp_path / "out.mp4")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith(clip)]
    assert len(said) == 2, said
    assert "its frames are in colour already" in said[0]
    assert f"{W}x{H}, 6 frames at" in said[1] and "to go" in said[1] and "continues from the last finished part" in said[1]
    video.colorize_video(colorizer, make_clip(tmp_path / "gray.mp4", n=2), tmp_path / "gray_out.mp4")
    assert "in colour already" not in capsys.readouterr().out  # a gray film through the codec is not colour


def test_a_variable_frame_rate_keeps_each_frames_time(tmp_path, colorizer):
    clip = str(tmp_path / "vfr.mp4")
    steps = [40, 40, 120, 20, 20, 200, 40, 40]  # ms between frames
    with av.open(clip, "w") as out:
        vs = out.add_stream("libx264", rate=25, options={"bf": "0"})
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.time_base = vs.codec_context.time_base = fractions.Fraction(1, 1000)
        t = 0
        for i, step in enumerate(steps):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base, t = t, vs.time_base, t + step
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
    video.colorize_video(colorizer, clip, tmp_path / "out.mp4", progress=False, chunk_frames=3)

    def times(path):
        with av.open(str(path)) as c:
            return [round(float(f.pts * f.time_base), 3) for f in c.decode(video=0)]
    assert times(tmp_path / "out.mp4") == times(clip) == [0, 0.04, 0.08, 0.2, 0.22, 0.24, 0.44, 0.48]
