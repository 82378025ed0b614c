"""Streaming inference with VideoSegmenter."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from models import MODEL_NAMES, VideoSegmenter, build_model


@pytest.fixture(scope="module")
def tiny_nets():
    torch.manual_seed(0)
    nets = {name: build_model(name, size="tiny").eval() for name in MODEL_NAMES}
    with torch.no_grad():  # the other objects' filter starts at zero: make that channel count
        for net in nets.values():
            net.memory_encoder.stem[0].weight[:, 4].normal_(std=0.05)
    return nets


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_streaming_matches_the_training_forward(name, tiny_nets, make_video):
    """Frame by frame inference computes what the clip forward computes (odd size, 2 objects).

    Both feed each object's memory with the other object's mask (the filter is non-zero).
    """
    net = tiny_nets[name]
    frames, labels = make_video(length=4, height=35, width=45, num_objects=2, seed=3)
    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float() / 255
    with torch.no_grad():
        expected = net(clip, torch.from_numpy(labels[:1]), num_objects=2).logits.exp()[0]

    segmenter = VideoSegmenter(net)
    first = segmenter.step(frames[0], labels=labels[0])
    assert np.array_equal(first.labels, labels[0])
    for t in range(1, 4):
        result = segmenter.step(frames[t])
        assert result.probs.shape == (3, 35, 45) and result.probs.dtype == np.float32
        assert result.labels.shape == (35, 45) and result.labels.dtype == np.uint8
        np.testing.assert_allclose(result.probs, expected[t - 1].numpy(), rtol=1e-4, atol=1e-5)
        assert np.array_equal(result.labels, result.probs.argmax(axis=0))


def test_gc_state_is_the_same_after_1_and_40_frames(tiny_nets, make_video):
    """The streaming state is the GC matrix per object (500 writes: tests/models/test_memory.py)."""
    frames, labels = make_video(length=2, height=16, width=16, num_objects=2)
    segmenter = VideoSegmenter(tiny_nets["gc"])
    segmenter.step(frames[0], labels=labels[0])
    after_one = segmenter.state_nbytes()
    value_channels = tiny_nets["gc"].config["value_channels"]
    key_channels = tiny_nets["gc"].config["key_channels"]
    assert after_one == 2 * key_channels * value_channels * 4  # one float32 C_N x C_M per object
    for t in range(1, 40):
        segmenter.step(frames[t % 2])
    assert segmenter.state_nbytes() == after_one


def test_first_frame_weight_is_an_inference_rule_the_training_clip_does_not_read(
    tiny_nets, make_video
):
    """With w = 1 the memory is frame 0's alone: the same frame gives the same prediction
    however many frames came between; the paper's mean keeps learning. Training: unchanged."""
    paper = tiny_nets["gc"]
    first_only = copy.deepcopy(paper).record_first_frame_weight(1.0)
    assert (
        first_only.config["first_frame_weight"] == 1.0
        and paper.config["first_frame_weight"] is None
    )
    frames, labels = make_video(length=3, height=24, width=32, num_objects=1, seed=5)

    def probs_of_frame_1_seen_twice(net):
        segmenter = VideoSegmenter(net)
        segmenter.step(frames[0], labels=labels[0])
        seen = [segmenter.step(frames[1]).probs, segmenter.step(frames[2]).probs]
        return seen[0], segmenter.step(frames[1]).probs

    once, again = probs_of_frame_1_seen_twice(first_only)
    np.testing.assert_allclose(once, again, rtol=1e-5, atol=1e-6)
    once, again = probs_of_frame_1_seen_twice(paper)
    assert np.abs(once - again).max() > 1e-4

    clip = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float() / 255
    with torch.no_grad():
        trained_on = [
            net(clip, torch.from_numpy(labels[:1]), 1).logits for net in (paper, first_only)
        ]
    torch.testing.assert_close(*trained_on)
    with pytest.raises(ValueError, match=r"first_frame_weight must be a number in \(0, 1\]"):
        copy.deepcopy(paper).record_first_frame_weight(0)


@pytest.mark.parametrize("name", ["stm", "gvos_scm"])
def test_state_follows_the_memory_rule(name, tiny_nets, make_video):
    """STM: bytes grow with first + every 5th + previous frame; GVOS-SCM: constant."""
    frames, labels = make_video(length=2, height=16, width=32, num_objects=1)
    segmenter = VideoSegmenter(tiny_nets[name])
    sizes = []
    for t in range(21):
        segmenter.step(frames[t % 2], labels=labels[0] if t == 0 else None)
        sizes.append(segmenter.state_nbytes())
    if name == "gvos_scm":
        assert len(set(sizes)) == 1
        return
    frames_held = [1 + t // 5 + (t % 5 != 0) for t in range(21)]
    bytes_per_frame = sizes[1] - sizes[0]
    assert bytes_per_frame > 0
    assert sizes == [bytes_per_frame * n for n in frames_held]


def test_objects_can_first_appear_on_a_later_frame(tiny_nets, make_video):
    frames, labels = make_video(length=4, height=32, width=32, num_objects=2, seed=1)
    first_mask = np.where(labels[0] == 1, 1, 0)
    later_mask = np.where(labels[2] == 2, 7, 0)  # object id 7 annotated on frame 2 only
    segmenter = VideoSegmenter(tiny_nets["stm"])

    assert segmenter.step(frames[0], labels=first_mask).probs.shape == (2, 32, 32)
    segmenter.step(frames[1])
    appeared = segmenter.step(frames[2], labels=later_mask)
    following = segmenter.step(frames[3])

    assert segmenter.object_ids == [1, 7]
    assert appeared.probs.shape == (8, 32, 32)
    assert (appeared.labels[later_mask == 7] == 7).all()
    np.testing.assert_allclose(appeared.probs[7][later_mask == 7], 1.0)
    assert (appeared.probs[2:7] == 0).all()  # ids never seen have probability 0
    np.testing.assert_allclose(following.probs.sum(axis=0), 1.0, rtol=1e-5)
    assert set(np.unique(following.labels)) <= {0, 1, 7}


def test_reset_starts_a_new_video(tiny_nets, make_video):
    frames, labels = make_video(length=2, height=32, width=32, num_objects=1)
    segmenter = VideoSegmenter(tiny_nets["gc"])
    segmenter.step(frames[0], labels=labels[0])
    segmenter.reset()
    assert segmenter.state_nbytes() == 0
    with pytest.raises(ValueError, match="the first frame needs labels"):
        segmenter.step(frames[1])
    small = frames[0][:20, :24]
    assert segmenter.step(small, labels=labels[0][:20, :24]).labels.shape == (20, 24)


RGB = np.zeros((24, 32, 3), np.uint8)
MASK = np.zeros((24, 32), np.uint8)
MASK[5:12, 5:12] = 1


@pytest.mark.parametrize(
    ("frame", "labels", "message"),
    [
        (RGB, np.zeros_like(MASK), "frame 0: no object in the first mask"),
        (RGB, None, "frame 0: the first frame needs labels"),
        (RGB, MASK[:20], r"frame 0: labels have shape \(20, 32\) but the frame is \(24, 32\)"),
        (RGB[..., 0], MASK, r"frame 0: frame is greyscale \(24, 32\)"),
        (np.zeros((24, 32, 4), np.uint8), MASK, r"frame 0: frame has 4 channels \(RGBA\?\)"),
        (np.full((24, 32, 3), np.nan, np.float32), MASK, "frame 0: frame contains NaN"),
        (RGB.astype(np.float32), MASK, "frame 0: frame has dtype float32; expected uint8"),
        (RGB, MASK.astype(np.float32), "frame 0: labels must be an integer numpy array"),
        (RGB, MASK.astype(np.int32) * 300, r"frame 0: labels must be object ids in 0..255"),
        (torch.zeros(24, 32, 3), MASK, "frame 0: frame must be a numpy array"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(tiny_nets, frame, labels, message):
    segmenter = VideoSegmenter(tiny_nets["gc"])
    with pytest.raises(ValueError, match=message):
        segmenter.step(frame, labels=labels)
    assert segmenter.state_nbytes() == 0  # nothing half-done was kept


def test_a_frame_of_another_size_is_refused_and_the_video_goes_on(tiny_nets):
    segmenter = VideoSegmenter(tiny_nets["gc"])
    segmenter.step(RGB, labels=MASK)
    with pytest.raises(
        ValueError, match=r"frame 1: frame size \(24, 31\) differs from the video's \(24, 32\)"
    ):
        segmenter.step(RGB[:, :31])
    assert segmenter.step(RGB).probs.shape == (2, 24, 32)


def test_segments_a_davis_sequence_at_reduced_size(davis_root, tiny_nets):
    """A real video through the streaming API: 854x480 frames shrunk to 107x60 (not /16)."""
    sequence = "blackswan"
    image_dir = davis_root / "JPEGImages" / "480p" / sequence
    mask_dir = davis_root / "Annotations" / "480p" / sequence
    size = (107, 60)  # (W, H) for PIL
    frame_paths = sorted(image_dir.glob("*.jpg"))[:8]
    first_mask = np.array(Image.open(mask_dir / "00000.png").resize(size, Image.NEAREST)) > 127
    segmenter = VideoSegmenter(tiny_nets["gc"])
    state_sizes = []
    for t, path in enumerate(frame_paths):
        frame = np.array(Image.open(path).convert("RGB").resize(size, Image.BILINEAR))
        result = segmenter.step(frame, labels=first_mask.astype(np.uint8) if t == 0 else None)
        assert result.probs.shape == (2, 60, 107) and result.labels.shape == (60, 107)
        assert np.isfinite(result.probs).all()
        np.testing.assert_allclose(result.probs.sum(axis=0), 1.0, rtol=1e-5)
        if t == 0:
            assert np.array_equal(result.labels, first_mask)
        state_sizes.append(segmenter.state_nbytes())
    assert len(frame_paths) == 8 and len(set(state_sizes)) == 1


def test_bfloat16_autocast_stays_close_to_float32_and_keeps_the_state_in_float32(
    tiny_nets, make_video
):
    frames, labels = make_video(length=3, height=32, width=32, num_objects=1)
    exact, fast = VideoSegmenter(tiny_nets["gc"]), VideoSegmenter(tiny_nets["gc"], dtype="bfloat16")
    for t in range(3):
        given = labels[0] if t == 0 else None
        expected, result = exact.step(frames[t], labels=given), fast.step(frames[t], labels=given)
        assert result.probs.dtype == np.float32
        np.testing.assert_allclose(result.probs, expected.probs, atol=0.05)
    assert fast.state_nbytes() == exact.state_nbytes()  # the running mean stays float32
    with pytest.raises(ValueError, match="dtype must be one of"):
        VideoSegmenter(tiny_nets["gc"], dtype="int8")


def encoder_input_sizes(net) -> tuple[list, object]:
    """The (H, W) of every frame the query encoder sees, and the hook to remove."""
    sizes = []
    hook = net.query_encoder.register_forward_pre_hook(
        lambda _, args: sizes.append(tuple(args[0].shape[-2:]))
    )
    return sizes, hook


def run_video(segmenter, frames, first_labels):
    results = [segmenter.step(frames[0], labels=first_labels)]
    return results + [segmenter.step(frame) for frame in frames[1:]]


@pytest.mark.parametrize(
    ("height", "width", "internal_size", "seen"),
    [
        (240, 427, 60, (60, 107)),  # 427 * 60 / 240 = 106.75
        (61, 97, 48, (48, 76)),  # down: 97 * 48 / 61 = 76.3
        (61, 97, 80, (80, 127)),  # up: 97 * 80 / 61 = 127.2
        (61, 97, "original", (61, 97)),
    ],
)
def test_internal_size_is_honoured_and_masks_come_back_at_the_frame_size(
    height, width, internal_size, seen, tiny_nets, make_video
):
    net = tiny_nets["gvos_scm"]
    frames, labels = make_video(length=3, height=height, width=width, num_objects=2, seed=2)
    segmenter = VideoSegmenter(net, internal_size=internal_size)
    assert segmenter.internal_size((height, width)) == seen
    sizes, hook = encoder_input_sizes(net)
    try:
        results = run_video(segmenter, frames, labels[0])
    finally:
        hook.remove()

    padded = tuple(-(-side // 16) * 16 for side in seen)  # padded up to the stride
    assert sizes == [padded, padded]  # frames 1 and 2 (frame 0 is given)
    assert np.array_equal(results[0].labels, labels[0])  # given pixels exactly as given
    for result in results:
        assert result.probs.shape == (3, height, width)
        assert result.labels.shape == (height, width)
        np.testing.assert_allclose(result.probs.sum(axis=0), 1.0, rtol=1e-5)
        assert np.array_equal(result.labels, result.probs.argmax(axis=0))


def test_the_default_internal_size_follows_the_models_train_size(make_video):
    torch.manual_seed(0)
    trained_at_32 = build_model("gc", size="tiny", train_size=32).eval()
    unknown = build_model("gc", size="tiny").eval()
    frames, labels = make_video(length=2, height=64, width=96, num_objects=1)
    cases = [
        (VideoSegmenter(trained_at_32), trained_at_32, (32, 48)),
        (VideoSegmenter(trained_at_32, internal_size="original"), trained_at_32, (64, 96)),
        (VideoSegmenter(unknown), unknown, (64, 96)),
    ]
    for segmenter, net, expected in cases:
        sizes, hook = encoder_input_sizes(net)
        try:
            result = run_video(segmenter, frames, labels[0])[-1]
        finally:
            hook.remove()
        assert sizes == [expected] and result.labels.shape == (64, 96)


def test_a_reduced_internal_size_is_the_bilinear_upsampling_of_the_small_run(tiny_nets, make_video):
    """At half size the result is the run on half-size frames, upsampled bilinearly
    (up to the rounding of the half-size frames to uint8)."""
    net = tiny_nets["stm"]
    frames, labels = make_video(length=3, height=64, width=96, num_objects=2, seed=4)
    small_frames = (
        torch.nn.functional.interpolate(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255,
            size=(32, 48),
            mode="bilinear",
            antialias=True,
        )
        .mul(255)
        .round()
        .byte()
        .permute(0, 2, 3, 1)
        .numpy()
    )
    halved = run_video(VideoSegmenter(net, internal_size=32), frames, labels[0])
    small = run_video(VideoSegmenter(net), small_frames, labels[0][1::2, 1::2])
    for big, reference in zip(halved[1:], small[1:], strict=True):
        upsampled = torch.nn.functional.interpolate(
            torch.from_numpy(reference.probs)[None], size=(64, 96), mode="bilinear"
        )[0]
        np.testing.assert_allclose(big.probs, upsampled.numpy(), atol=5e-3)


@pytest.mark.parametrize("bad", [0, -1, 2.5, "train_size", True])
def test_a_bad_internal_size_is_refused(bad, tiny_nets):
    with pytest.raises(ValueError, match="internal_size must be 'train', 'original' or a positive"):
        VideoSegmenter(tiny_nets["gc"], internal_size=bad)
