"""The three networks on training clips: shapes, gradients, frozen batch norm, config."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from models import MODEL_NAMES, PretrainedWeightsUnavailable, build_model
from models.backbone import _ARCHITECTURES


def batch_norm_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Statistics and scale/shift of every batch norm layer."""
    state = {}
    for name, module in net.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for key in ("running_mean", "running_var", "weight", "bias"):
                state[f"{name}.{key}"] = getattr(module, key).detach().clone()
    return state


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_step_gives_finite_loss_grads_everywhere_and_keeps_batch_norm_frozen(
    name, make_clip
):
    torch.manual_seed(0)
    net = build_model(name, size="tiny").train()
    frames, labels = make_clip(batch=2, length=3, height=32, width=48, num_objects=2)
    first_labels = labels[:, 0].clone()
    first_labels[1][first_labels[1] == 2] = 0  # object 2 is absent from sample 1's first mask
    frozen_before = batch_norm_state(net)
    assert frozen_before, "expected batch norm layers in the encoders"
    batch_norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert not any(m.training for m in batch_norms)  # frozen although net.train() was called

    pred = net(frames, first_labels, num_objects=2)
    loss = net.loss(pred, labels[:, 1:])
    loss.backward()
    torch.optim.Adam(net.parameters(), lr=1e-3).step()

    assert pred.logits.shape == (2, 2, 3, 32, 48)
    assert torch.isfinite(loss) and loss.item() > 0
    missing = [
        n
        for n, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, f"parameters without gradient: {missing}"
    for name, after in batch_norm_state(net).items():
        assert torch.equal(after, frozen_before[name]), f"{name} changed"
    probs = pred.logits.exp()
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(2, 2, 32, 48))
    assert (probs[1, :, 2] == 0).all()  # the absent object has probability exactly 0
    assert pred.object_valid.tolist() == [[True, True], [True, False]]


def test_tiny_gc_overfits_one_clip(make_clip):
    """Training works: 20 Adam steps on one clip cut the loss by three quarters or more."""
    torch.manual_seed(0)
    net = build_model("gc", size="tiny").train()
    frames, labels = make_clip(batch=1, length=3, height=32, width=32, num_objects=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = net.loss(net(frames, labels[:, 0], 1), labels[:, 1:])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"overfit losses: first {losses[0]:.3f}, last {losses[-1]:.3f}")
    assert sum(losses[-3:]) / 3 < 0.25 * losses[0]


@pytest.mark.parametrize(("height", "width"), [(37, 53), (17, 31)])
def test_outputs_have_the_input_size_for_odd_sizes(height, width):
    net = build_model("gvos_scm", size="tiny").eval()
    frames = torch.rand(1, 2, 3, height, width)
    labels = torch.zeros(1, height, width, dtype=torch.long)
    labels[0, height // 3 : height // 2, width // 3 : width // 2] = 1
    with torch.no_grad():
        pred = net(frames, labels, 1)
    assert pred.logits.shape == (1, 1, 2, height, width)
    assert pred.object_logits.shape == (1, 1, 1, height, width)


def count_parameters(name: str, size: str) -> int:
    with torch.device("meta"):  # shapes only: no memory, no random init
        return sum(p.numel() for p in build_model(name, size=size).parameters())


def test_full_gc_has_about_38_million_parameters():
    counts = {name: count_parameters(name, "full") for name in MODEL_NAMES}
    for name, count in counts.items():
        print(f"full {name}: {count / 1e6:.2f} M parameters")
    assert abs(counts["gc"] - 38e6) <= 0.15 * 38e6
    assert counts["stm"] == counts["gc"]  # same layers, only the memory read differs
    assert counts["gvos_scm"] > counts["gc"]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_is_json_and_rebuilds_the_same_architecture(name):
    with torch.device("meta"):
        net = build_model(name, size="tiny", decoder_channels=32)
        config = json.loads(json.dumps(net.config))
        rebuilt = build_model(**config)
    assert config["name"] == name and config["decoder_channels"] == 32
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert type(rebuilt) is type(net)


def test_bad_options_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        build_model("unet", size="tiny")
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        build_model("gc", size="huge")
    with pytest.raises(ValueError, match="model 'gc' has no option memory_every"):
        build_model("gc", size="tiny", memory_every=3)
    with pytest.raises(ValueError, match="key_channels must be a positive integer"):
        build_model("stm", size="tiny", key_channels=0)
    with pytest.raises(ValueError, match=r"first_frame_weight must be a number in \(0, 1\]"):
        build_model("gvos_scm", size="tiny", first_frame_weight=1.5)
    with pytest.raises(ValueError, match="model 'stm' has no option first_frame_weight"):
        build_model("stm", size="tiny", first_frame_weight=0.5)


def clip_inputs() -> tuple[torch.Tensor, torch.Tensor, int]:
    frames = torch.rand(1, 3, 3, 32, 32)
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 8:16, 8:16] = 1
    return frames, labels, 1


BAD_CLIPS = {
    "one frame": (
        lambda x, y, k: (x[:, :1], y, k),
        r"frames must be a tensor \[B, T, 3, H, W\] with T >= 2",
    ),
    "grey frames": (
        lambda x, y, k: (x[:, :, :1], y, k),
        r"frames must be a tensor \[B, T, 3, H, W\]",
    ),
    "uint8 frames": (lambda x, y, k: ((x * 255).to(torch.uint8), y, k), "frames must be float"),
    "mask size": (lambda x, y, k: (x, y[:, :16], k), r"first_labels has shape \(1, 16, 32\)"),
    "mask dtype": (lambda x, y, k: (x, y.int(), k), "first_labels must be an int64 tensor"),
    "no objects": (lambda x, y, k: (x, y, 0), "num_objects must be a positive int"),
}


@pytest.fixture(scope="module")
def tiny_gc():
    return build_model("gc", size="tiny")


@pytest.mark.parametrize("case", BAD_CLIPS)
def test_bad_clips_raise_value_errors_naming_the_problem(case, tiny_gc):
    """x: frames, y: first labels, k: number of objects. Shapes and dtypes only: value checks
    (range, NaN, ids) read tensors back, so they run on the CPU batch before it moves
    (`training.loop.check_batch`, tests/training/test_loop.py)."""
    make_bad, message = BAD_CLIPS[case]
    with pytest.raises(ValueError, match=message):
        tiny_gc(*make_bad(*clip_inputs()))


def test_bad_targets_raise_value_errors(tiny_gc):
    net = tiny_gc
    frames, labels, num_objects = clip_inputs()
    with torch.no_grad():
        pred = net(frames, labels, num_objects)
    with pytest.raises(ValueError, match=r"target_labels has shape \(1, 3, 32, 32\)"):
        net.loss(pred, labels[:, None].expand(1, 3, 32, 32))


def test_pretrained_weights_load_from_the_torch_cache(tmp_path, monkeypatch):
    """ImageNet weights come through torchvision's loader; RGB filters copied, mask filter
    new, the other objects' filter zero."""
    constructor, weights, _ = _ARCHITECTURES["resnet18"]
    reference = constructor().state_dict()  # stands in for the ImageNet file (no internet here)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference, checkpoints / weights.url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    net = build_model("gc", size="tiny", pretrained_backbone=True)

    torch.testing.assert_close(
        net.query_encoder.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"]
    )
    torch.testing.assert_close(
        net.memory_encoder.layer2[0].conv1.weight, reference["layer2.0.conv1.weight"]
    )
    memory_conv1 = net.memory_encoder.stem[0].weight
    assert memory_conv1.shape == (64, 5, 7, 7)  # RGB, this object, the other objects
    torch.testing.assert_close(memory_conv1[:, :3], reference["conv1.weight"])
    assert memory_conv1[:, 3].abs().sum() > 0 and (memory_conv1[:, 4] == 0).all()
    torch.testing.assert_close(net.query_encoder.stem[1].running_var, reference["bn1.running_var"])


def test_missing_pretrained_weights_fail_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache
    for variable in ("HTTPS_PROXY", "https_proxy"):  # a closed port: refused at once, online or not
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsUnavailable) as error:
        build_model("gc", size="tiny", pretrained_backbone=True)
    assert time.monotonic() - start < 30
    message = str(error.value)
    assert "\n" not in message
    assert "cannot load ImageNet weights" in message and "pretrained_backbone=False" in message


def test_bf16_autocast_training_step_is_finite(make_clip):
    """The GPU recipe (bf16 autocast) on the richest network: losses stay finite, in float32."""
    torch.manual_seed(0)
    net = build_model("gvos_scm", size="tiny").train()
    frames, labels = make_clip(batch=1, length=3, height=16, width=32, num_objects=2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        pred = net(frames, labels[:, 0], 2)
        loss = net.loss(pred, labels[:, 1:])
    loss.backward()
    assert pred.logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_batch_norm_learns_when_unfrozen_for_training_from_scratch(make_clip):
    """`freeze_batchnorm(False)`: statistics update under train() and the affine parameters
    get gradients; eval() still uses the running statistics; freezing again restores the
    papers' setting."""
    torch.manual_seed(0)
    net = build_model("gc", size="tiny").freeze_batchnorm(False).train()
    batch_norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms and all(m.training for m in batch_norms)
    before = batch_norm_state(net)
    frames, labels = make_clip(batch=2, length=3, height=32, width=48, num_objects=1)
    net.loss(net(frames, labels[:, 0], num_objects=1), labels[:, 1:]).backward()
    assert any(m.weight.grad is not None and m.weight.grad.any() for m in batch_norms)
    changed = batch_norm_state(net)
    assert any(not torch.equal(before[key], changed[key]) for key in before)  # running stats
    net.eval()
    assert not any(m.training for m in batch_norms)
    net.freeze_batchnorm(True).train()
    assert not any(m.training or m.weight.requires_grad for m in batch_norms)
