"""The memory encoder's "other objects" channel, and configs saved before it existed."""

from __future__ import annotations

import pytest
import torch

from models import MODEL_NAMES, SIZES, build_model
from models.config import saved_config
from models.networks import other_objects

# The options every model had before `other_objects_mask`, `train_size` and
# `key_coordinates` were added.
ADDED_LATER = ("other_objects_mask", "train_size", "key_coordinates")


def old_style_config(net) -> dict:
    """`net.config` as a model saved before the options of ADDED_LATER would hold it."""
    return {key: value for key, value in net.config.items() if key not in ADDED_LATER}


def test_other_objects_is_the_clamped_union_of_the_other_objects_of_the_same_sample():
    probs = torch.tensor([0.5, 0.25, 0.75, 0.5, 0.5]).view(5, 1, 1, 1).expand(5, 1, 2, 3)
    owner = torch.tensor([0, 0, 0, 1, 2])  # three objects of sample 0, one each of 1 and 2
    others = other_objects(probs, owner)[:, 0, 0, 0]
    torch.testing.assert_close(others, torch.tensor([1.0, 1.0, 0.75, 0.0, 0.0]))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_new_models_read_rgb_mask_and_other_objects(name, size):
    with torch.device("meta"):
        net = build_model(name, size=size)
    assert net.config["other_objects_mask"] is True and net.config["train_size"] is None
    assert net.memory_encoder.stem[0].in_channels == 5


def test_a_new_models_other_objects_filter_starts_at_zero():
    conv1 = build_model("stm", size="tiny").memory_encoder.stem[0].weight
    assert (conv1[:, 4] == 0).all() and (conv1[:, 3] != 0).any()


def test_training_feeds_the_soft_masks_of_the_other_objects_of_the_same_sample(make_clip):
    torch.manual_seed(0)
    net = build_model("gc", size="tiny").eval()
    masks_seen = []
    hook = net.memory_encoder.register_forward_pre_hook(lambda _, args: masks_seen.append(args[1]))
    frames, labels = make_clip(batch=2, length=3, height=32, width=32, num_objects=3)
    try:
        with torch.no_grad():
            pred = net(frames, labels[:, 0], num_objects=3)
    finally:
        hook.remove()

    first = torch.stack([labels[:, 0] == k for k in (1, 2, 3)], dim=1).float()  # [B, K, H, W]
    second = pred.logits[:, 0, 1:].exp()  # frame 1 enters the memory with its soft masks
    for seen, object_masks in zip(masks_seen, [first, second], strict=True):
        assert seen.shape == (6, 2, 32, 32)
        torch.testing.assert_close(seen[:, 0], object_masks.flatten(0, 1))
        union_of_others = (object_masks.sum(dim=1, keepdim=True) - object_masks).clamp(max=1)
        torch.testing.assert_close(seen[:, 1], union_of_others.flatten(0, 1))


def test_the_other_objects_channel_changes_an_objects_memory_once_its_filter_is_trained():
    torch.manual_seed(0)
    net = build_model("gc", size="tiny").eval()
    with torch.no_grad():
        net.memory_encoder.stem[0].weight[:, 4].normal_(std=0.05)
        frames = torch.rand(1, 3, 32, 32).expand(2, -1, -1, -1)  # one frame, 2 objects
        masks = torch.zeros(2, 1, 32, 32)
        masks[0, :, 4:12, 4:12] = 1
        moved = masks.clone()
        moved[1, :, 20:28, 20:28] = 1  # only the second object's mask changes
        key, _ = net.encode_memory(frames, masks, owner=torch.tensor([0, 0]))
        key_moved, _ = net.encode_memory(frames, moved, owner=torch.tensor([0, 0]))
        key_apart, _ = net.encode_memory(frames, moved, owner=torch.tensor([0, 1]))
    assert (key[0] - key_moved[0]).abs().amax() > 1e-4  # object 0 sees object 1 move
    torch.testing.assert_close(key[0], key_apart[0])  # not when they are in different samples


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_config_saved_before_the_new_options_rebuilds_and_loads_its_4_channel_model(name):
    torch.manual_seed(0)
    old = build_model(name, size="tiny", other_objects_mask=False)
    assert old.memory_encoder.stem[0].in_channels == 4
    saved = {"config": old_style_config(old), "state_dict": old.state_dict()}

    rebuilt = build_model(**saved_config(saved["config"]))
    rebuilt.load_state_dict(saved["state_dict"])  # strict: same keys and shapes
    assert rebuilt.config["other_objects_mask"] is False and rebuilt.config["train_size"] is None
    assert type(rebuilt) is type(old)

    frames = torch.rand(1, 2, 3, 32, 32)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 4:12, 4:12], labels[0, 16:28, 16:28] = 1, 2
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(frames, labels, 2).logits, old(frames, labels, 2).logits)


def test_a_new_build_gets_the_new_defaults_and_a_saved_config_keeps_its_values():
    with torch.device("meta"):
        assert build_model("gc", size="tiny", decoder_channels=32).config["other_objects_mask"]
        complete = old_style_config(build_model("stm", size="tiny"))
        assert build_model(**complete).config["other_objects_mask"] is True  # a new build
        current = build_model("stm", size="tiny", other_objects_mask=True, train_size=240).config
    assert saved_config(current) == current  # what a model records wins over the old values


def test_train_size_is_recorded_validated_and_survives_a_rebuild():
    with torch.device("meta"):
        net = build_model("gvos_scm", size="tiny", train_size=384)
        assert build_model(**net.config).config["train_size"] == 384
    for bad in (0, -5, 384.0, "384", True):
        with pytest.raises(ValueError, match="train_size must be a positive integer"):
            build_model("gc", size="tiny", train_size=bad)
    with pytest.raises(ValueError, match="other_objects_mask must be true or false"):
        build_model("gc", size="tiny", other_objects_mask=1)
