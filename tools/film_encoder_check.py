"""Where the flicker of a written film comes from: the temporal filter, 8-bit 4:2:0 frames, or the
H.264 encoder. The bundled model colorizes the first frames of a clip; the filtered and the alone
frames are then measured (video.flicker) in floating point, as 8-bit 4:2:0 frames, and encoded and
decoded under x264 settings; and the decoded luma and chroma planes are swapped with the source's.

    python tools/film_encoder_check.py ../shared/datasets/video/abomb_1952.mp4 --frames 90 --temporal 0.8
"""
import argparse
import io
import os
import sys

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video  # noqa: E402
from colorizer import Colorizer  # noqa: E402
from images import rgb_to_lab  # noqa: E402

SETTINGS = {"x264 defaults (crf 23)": {}, "crf 12": {"crf": "12"}, "qp 0 (lossless)": {"qp": "0"},
            "video.X264_OPTIONS": video.X264_OPTIONS,
            "+ psy-rd 0": {**video.X264_OPTIONS, "x264-params": "chroma-qp-offset=-12:psy-rd=0,0"},
            "+ no b-frames": {**video.X264_OPTIONS, "x264-params": "chroma-qp-offset=-12:bframes=0"}}


def lab(rgb):
    return rgb_to_lab(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0].transpose(1, 2, 0)


def planes(rgb):
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()


def to_rgb(p):
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(p), format="yuv420p").to_ndarray(format="rgb24")


def encoded(frames, options):
    """The yuv420p planes of frames after an H.264 encode and decode with these options."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=25, options=options)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for x in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(x, format="rgb24").reformat(format="yuv420p")))
        out.mux(s.encode(None))
    buf.seek(0)
    with av.open(buf) as c:
        return [f.to_ndarray() for f in c.decode(video=0)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("clip")
    p.add_argument("--frames", type=int, default=90)
    p.add_argument("--temporal", type=float, default=video.TEMPORAL)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with av.open(args.clip) as c:
        source = [f.to_ndarray(format="rgb24") for _, f in zip(range(args.frames), c.decode(video=0))]
        source = [x[:x.shape[0] // 2 * 2, :x.shape[1] // 2 * 2] for x in source]
    colorizer = Colorizer.load()
    per_frame = [video.frame_lab(colorizer, x) for x in source]
    filt = video.TemporalFilter(args.temporal)
    films = {"filtered": [(L, filt(L, ab)) for L, ab in per_frame], "alone": per_frame}
    rgb = {k: [video.compose(L, ab) for L, ab in v] for k, v in films.items()}

    def flicker(name, make):
        f, a = make("filtered"), make("alone")
        print(f"{name:28s} filtered {f:.3f}  alone {a:.3f}  ratio {f / a:.3f}", flush=True)
    print(f"{args.clip}: first {len(source)} frames, temporal {args.temporal}; flicker")
    flicker("floating point", lambda k: video.flicker([np.dstack([L, ab]) for L, ab in films[k]]))
    flicker("8-bit RGB", lambda k: video.flicker([lab(x) for x in rgb[k]]))
    flicker("8-bit 4:2:0, no codec", lambda k: video.flicker([lab(to_rgb(planes(x))) for x in rgb[k]]))
    for name, options in SETTINGS.items():
        flicker(name, lambda k, o=options: video.flicker([lab(to_rgb(x)) for x in encoded(rgb[k], o)]))
    h = source[0].shape[0]
    for name, luma_from, chroma_from in (("decoded chroma, source luma", 1, 0), ("decoded luma, source chroma", 0, 1)):
        def swapped(k, luma_from=luma_from, chroma_from=chroma_from):
            pairs = zip([planes(x) for x in rgb[k]], encoded(rgb[k], video.X264_OPTIONS))
            return video.flicker([lab(to_rgb(np.concatenate([(s, d)[1 - luma_from][:h], (s, d)[1 - chroma_from][h:]])))
                                  for s, d in pairs])
        flicker(name + " (X264_OPTIONS)", swapped)


if __name__ == "__main__":
    main()
