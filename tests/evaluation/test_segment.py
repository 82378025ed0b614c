"""`vos segment` on a real DAVIS sequence with a tiny model, its internal size, and its one-line
errors (which leave no partial output)."""

from __future__ import annotations

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from core.masks import read_mask
from evaluation.segment import SegmentConfig, internal_size, segment_video
from models import build_model
from pipelines import segment


def frames_and_mask(davis_subset, sequence="blackswan"):
    return (
        davis_subset / "JPEGImages" / "480p" / sequence,
        davis_subset / "Annotations" / "480p" / sequence / "00000.png",
    )


def test_segments_a_sequence_with_overlay(davis_subset, tiny_model_file, tmp_path, capsys):
    frames, mask = frames_and_mask(davis_subset)
    out, gif = tmp_path / "masks", tmp_path / "overlay.gif"
    argv = ["--model", str(tiny_model_file), "--frames", str(frames), "--mask", str(mask)]
    argv += ["--out", str(out), "--overlay", str(gif), "resolution=64p", "device=cpu"]
    assert segment.main(argv) == 0

    names = sorted(path.stem for path in frames.glob("*.jpg"))
    written = sorted(out.glob("*.png"))
    assert [path.stem for path in written] == names
    assert all(Image.open(path).mode == "P" for path in written)
    np.testing.assert_array_equal(read_mask(written[0]), read_mask(mask))
    for path in written[1:]:
        labels = read_mask(path)
        assert labels.shape == (480, 854) and set(np.unique(labels)) <= {0, 1}
    animation = iio.imread(gif, index=None)
    assert animation.shape[0] == len(names) and animation.shape[2] == 480  # overlay_width
    assert f"segmented {len(names)} frames" in capsys.readouterr().out


def test_resolution_becomes_the_segmenters_internal_size():
    assert internal_size("model", (480, 854)) == "train"
    assert internal_size("original", (480, 854)) == "original"
    assert internal_size("120p", (480, 854)) == 120
    assert internal_size(0.5, (480, 854)) == 240
    assert SegmentConfig(model="m", frames="f", mask="m.png", out="o").resolution == "model"
    with pytest.raises(ValueError, match="resolution must be model"):
        internal_size("huge", (480, 854))


def encoder_input_sizes(net) -> tuple[list, object]:
    """The (H, W) of every frame the query encoder sees (padded to 16), and the hook."""
    sizes = []
    hook = net.query_encoder.register_forward_pre_hook(
        lambda _, args: sizes.append(tuple(args[0].shape[-2:]))
    )
    return sizes, hook


@pytest.mark.parametrize(
    ("resolution", "padded"),
    [
        (None, (32, 64)),  # the default: the model's train_size, 32 -> 32x51
        ("original", (64, 112)),  # 61x97
        ("40p", (48, 64)),  # 40x64
        (0.5, (32, 48)),  # short side round(30.5) = 30 -> 30x48
    ],
)
def test_segments_at_the_internal_size_and_returns_masks_at_the_frame_size(resolution, padded):
    torch.manual_seed(0)
    net = build_model("gc", size="tiny", train_size=32)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (61, 97, 3), dtype=np.uint8) for _ in range(3)]
    first = np.zeros((61, 97), np.uint8)
    first[10:40, 20:60] = 1
    options = {} if resolution is None else {"resolution": resolution}
    sizes, hook = encoder_input_sizes(net)
    try:
        steps = list(segment_video(net, frames, first, **options))
    finally:
        hook.remove()
    assert sizes == [padded, padded]  # frames 1 and 2 (frame 0's mask is given)
    assert [step.labels.shape for step in steps] == [(61, 97)] * 3
    np.testing.assert_array_equal(steps[0].labels, first)


def error_line(capsys, argv) -> str:
    assert segment.main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_clear_errors(davis_subset, tiny_model_file, tmp_path, capsys):
    frames, mask = frames_and_mask(davis_subset)
    base = ["--model", str(tiny_model_file), "--out", str(tmp_path / "out"), "resolution=64p"]

    (tmp_path / "empty").mkdir()
    line = error_line(capsys, [*base, "--frames", str(tmp_path / "empty"), "--mask", str(mask)])
    assert "empty: no frames" in line

    broken = tmp_path / "broken"
    shutil.copytree(frames, broken)
    (broken / "00004.jpg").write_bytes(b"\xff\xd8 truncated")
    line = error_line(capsys, [*base, "--frames", str(broken), "--mask", str(mask)])
    assert "00004.jpg: cannot read frame" in line
    assert not (tmp_path / "out").exists()  # found from the headers, before any work

    small = tmp_path / "small.png"
    Image.fromarray(np.full((240, 427), 255, np.uint8)).save(small)
    line = error_line(capsys, [*base, "--frames", str(frames), "--mask", str(small)])
    assert "the first mask is 427x240 but the frames are 854x480" in line

    line = error_line(
        capsys, [*base, "--frames", str(frames), "--mask", str(mask), "--overlay", "x.avi"]
    )
    assert "overlay must end in .gif or .mp4" in line


def test_a_failed_run_leaves_no_partial_output(davis_subset, tiny_model_file, tmp_path, capsys):
    frames, mask = frames_and_mask(davis_subset)
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.png").write_bytes(b"from an earlier run")
    base = ["--model", str(tiny_model_file), "--out", str(out), "--mask", str(mask)]
    base += ["resolution=64p", "device=cpu"]

    mixed = tmp_path / "mixed"
    shutil.copytree(frames, mixed)
    Image.open(mixed / "00003.jpg").resize((427, 240)).save(mixed / "00003.jpg")
    line = error_line(capsys, [*base, "--frames", str(mixed)])
    assert f"{mixed / '00003.jpg'}: frame is 427x240 but the first frame is 854x480" in line

    truncated = tmp_path / "truncated"  # a good header: found only when frame 5 is decoded
    shutil.copytree(frames, truncated)
    data = (truncated / "00005.jpg").read_bytes()
    (truncated / "00005.jpg").write_bytes(data[: len(data) // 2])
    line = error_line(capsys, [*base, "--frames", str(truncated)])
    assert "00005.jpg: cannot read frame" in line

    assert [path.name for path in out.iterdir()] == ["earlier.png"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mixed", "out", "truncated"]
