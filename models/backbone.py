"""ResNet encoders from torchvision, cut after res4 (`layer3`, stride 16).

Batch norm is frozen by default (both papers, which start from ImageNet weights; their
training batches are far too small to estimate statistics): the encoders keep their batch
norm layers in eval mode even under `train()`, and the batch norm scale and shift do not
train. Plain `nn.BatchNorm2d` in eval mode rather than `FrozenBatchNorm2d` because it runs as
one fused op (faster inference). An encoder trained from scratch needs its batch norm to
learn (`freeze_batchnorm(False)`): frozen at its initial identity it is no normalisation at
all, and a tiny model then learns a saliency shortcut instead of using its mask (measured:
`benchmarks/RESULTS.md`, "Mask dependence").
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv_models

STRIDE = 16  # output stride of res4; inputs are padded to a multiple of it
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT_S = 15.0

# torchvision constructor, ImageNet weights, channels of (res2, res3, res4).
_ARCHITECTURES = {
    "resnet18": (tv_models.resnet18, tv_models.ResNet18_Weights.IMAGENET1K_V1, (64, 128, 256)),
    "resnet50": (tv_models.resnet50, tv_models.ResNet50_Weights.IMAGENET1K_V1, (256, 512, 1024)),
}


class PretrainedWeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but could not be loaded or downloaded."""


@dataclass
class EncoderFeatures:
    """Feature maps of one encoder pass: res4 (stride 16) feeds the heads, res3/res2 the decoder."""

    res4: Tensor
    res3: Tensor
    res2: Tensor

    def select(self, index: Tensor) -> EncoderFeatures:
        """The features of batch elements `index` (e.g. one row per object)."""
        return EncoderFeatures(self.res4[index], self.res3[index], self.res2[index])


class ResNetEncoder(nn.Module):
    """ResNet stem + layer1..layer3 on RGB frames in [0, 1], optionally with mask channels.

    With `mask_channels` > 0 (the memory encoder) the first conv takes 3 + mask_channels
    inputs: the RGB filters of the (pretrained) conv, then one filter per mask channel.
    The first mask channel is the object's own mask; its filter keeps PyTorch's fresh init
    (STM's `conv1_m`). A second channel is the union of the other objects' masks; its
    filter starts at zero, so a new network (pretrained or not) starts out reading its own
    mask only and learns how much to use the others.
    """

    def __init__(self, backbone: str, mask_channels: int = 0, pretrained: bool = False):
        super().__init__()
        constructor, weights, channels = _ARCHITECTURES[backbone]
        resnet = constructor(weights=None)
        if pretrained:
            resnet.load_state_dict(load_imagenet_weights(weights))
        conv1 = resnet.conv1
        if mask_channels:
            conv1 = _add_mask_channels(conv1, mask_channels)
        self.mask_channels = mask_channels
        self.stem = nn.Sequential(conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3
        self.res2_channels, self.res3_channels, self.res4_channels = channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze_batchnorm(True)

    def freeze_batchnorm(self, frozen: bool = True) -> ResNetEncoder:
        """Keep batch norm in eval mode with fixed scale and shift (frozen), or let it learn."""
        self.batchnorm_frozen = frozen
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> ResNetEncoder:
        """Switch to training mode; frozen batch norm stays in eval mode."""
        super().train(mode)
        if self.batchnorm_frozen:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, rgb: Tensor, masks: Tensor | None = None) -> EncoderFeatures:
        """rgb: [N, 3, H, W] in [0, 1]; masks: [N, mask_channels, H, W] probabilities."""
        x = (rgb - self.mean) / self.std
        if masks is not None:
            x = torch.cat([x, masks.to(x.dtype)], dim=1)
        res2 = self.layer1(self.stem(x))
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        return EncoderFeatures(res4=res4, res3=res3, res2=res2)


def _add_mask_channels(conv: nn.Conv2d, count: int) -> nn.Conv2d:
    """A copy of `conv` taking `count` more input channels (see `ResNetEncoder`)."""
    wider = nn.Conv2d(
        conv.in_channels + count,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        wider.weight[:, : conv.in_channels] = conv.weight
        wider.weight[:, conv.in_channels + 1 :] = 0.0  # the other objects' filter
        if conv.bias is not None:
            wider.bias.copy_(conv.bias)
    return wider


def load_imagenet_weights(weights: tv_models.WeightsEnum) -> dict:
    """torchvision's ImageNet state dict (from the TORCH_HOME cache, else downloaded).

    Raises `PretrainedWeightsUnavailable` with one readable line instead of hanging or
    surfacing a urllib traceback when the file is neither cached nor downloadable.
    """
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:  # URLError, timeouts, hash mismatch, truncated file
        reason = str(error).replace("\n", " ")
        raise PretrainedWeightsUnavailable(
            f"cannot load ImageNet weights {weights} from {weights.url} into "
            f"{torch.hub.get_dir()}/checkpoints ({type(error).__name__}: {reason}); "
            "place the file there (it is downloaded once with network access) "
            "or build the model with pretrained_backbone=False"
        ) from error


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub opens URLs without a timeout; bound it so an offline host fails fast."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def pad_to_stride(x: Tensor, mode: str = "constant") -> Tensor:
    """Pad the last two dims of `x` at the bottom/right up to a multiple of STRIDE."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % STRIDE, -width % STRIDE
    if pad_h == 0 and pad_w == 0:
        return x
    if mode == "constant":
        return F.pad(x, (0, pad_w, 0, pad_h))
    leading = x.shape[:-3]
    padded = F.pad(x.reshape(-1, *x.shape[-3:]), (0, pad_w, 0, pad_h), mode=mode)
    return padded.reshape(*leading, *padded.shape[-3:])


def crop_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo `pad_to_stride`: keep the top-left `size` of the last two dims."""
    return x[..., : size[0], : size[1]]
