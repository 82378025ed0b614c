"""`vos segment`: segment a folder of frames from the mask of its first frame.

    vos segment --model models:/gc-vos@champion --frames FRAMES_DIR --mask FIRST_MASK.png \\
                --out OUT_DIR [--overlay overlay.gif] [resolution=0.5] [device=cuda]

Frames (jpg/png, in name order) are read one at a time and fed to the model's streaming
`VideoSegmenter`, so memory does not grow with the video for `gc` (its memory is a fixed-size
global context). Each frame's labels are written as a palette PNG named like the frame; the
first frame's mask is the one given. `resolution` sets the size the model sees: `model` (the
default: the size it was trained at), `original`, `<N>p` (short side N pixels, e.g. `120p`)
or a scale in (0, 1]; the masks are always written at the frames' own size (probabilities upsampled bilinearly, then the most probable label).
"""

from __future__ import annotations

import sys

from core.cli import EXIT_FAILED, EXIT_OK, console, fail, overrides_with_flags, stage_parser
from core.config import ConfigError, load_config
from core.masks import MaskError
from evaluation.segment import RESOLUTION_HELP, SegmentConfig, run

FLAGS = ("model", "frames", "mask", "out", "overlay")


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "vos segment",
        "Segment a folder of frames given the mask of the first frame; writes one palette PNG "
        f"mask per frame, named like the frame. Settings: resolution ({RESOLUTION_HELP}), device.",
    )
    parser.add_argument(
        "--model", help="models:/gc-vos@champion, runs:/<id>/model, a checkpoint or .pt"
    )
    parser.add_argument("--frames", help="folder of frames (jpg/png)")
    parser.add_argument("--mask", help="mask of the first frame (palette or 0/255 PNG)")
    parser.add_argument("--out", help="output folder for the masks")
    parser.add_argument("--overlay", help="also write an overlay animation (.gif or .mp4)")
    args = parser.parse_args(argv)
    overrides = overrides_with_flags(args.overrides, {key: getattr(args, key) for key in FLAGS})
    try:
        result = run(load_config(SegmentConfig, args.config, overrides))
    except (ConfigError, MaskError, FileNotFoundError, ValueError) as err:
        fail("segment", err)
        return EXIT_FAILED
    except Exception as err:  # model loading from MLflow or storage: say what, in one line
        if type(err).__module__.split(".")[0] not in ("mlflow", "botocore", "fsspec", "s3fs"):
            raise
        fail("segment", f"{type(err).__name__}: {str(err).splitlines()[0]}")
        return EXIT_FAILED
    overlay_note = f", overlay {result.overlay}" if result.overlay else ""
    console.print(
        f"segmented {result.frames} frames ({result.objects} object(s)) in {result.seconds:.1f} s "
        f"({result.fps:.1f} frames/s): masks in {result.out}{overlay_note}",
        highlight=False,
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
