"""`vos segment` on a real DAVIS sequence with a tiny model, and its one-line errors."""

from __future__ import annotations

import shutil

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from core.masks import read_mask
from evaluation.segment import processing_size
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


def test_processing_size():
    assert processing_size(480, 854, "original") == (480, 854)
    assert processing_size(480, 854, "120p") == (120, 214)
    assert processing_size(480, 854, 0.5) == (240, 427)
    with pytest.raises(ValueError, match="resolution must be"):
        processing_size(480, 854, "huge")


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
    assert (tmp_path / "out" / "00003.png").exists()  # what was done before stays

    small = tmp_path / "small.png"
    Image.fromarray(np.full((240, 427), 255, np.uint8)).save(small)
    line = error_line(capsys, [*base, "--frames", str(frames), "--mask", str(small)])
    assert "the first mask is 427x240 but the frames are 854x480" in line

    line = error_line(
        capsys, [*base, "--frames", str(frames), "--mask", str(mask), "--overlay", "x.avi"]
    )
    assert "overlay must end in .gif or .mp4" in line
