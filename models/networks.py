"""The three networks, `gc`, `gvos_scm` and `stm`, and `build_model`.

All three share the STM layout: a memory encoder (RGB + the object's mask + the union of
the other objects' masks, as STM's released code and STCN; 4 channels without the others
for models saved before `other_objects_mask`) and a query encoder (RGB), ResNet cut after
res4, key/value heads (which also read each cell's (x, y) with `key_coordinates`), a memory
read, and the STM decoder. They differ in the memory read
and in what surrounds it:

    gc        GlobalContextMemory read; objects merged by a softmax over their logits
    gvos_scm  gc + ASPP on the read-out, spatial constraint on the decoder input, boundary
              refinement of the decoder's output, hybrid loss on every side output;
              soft aggregation
    stm       SpaceTimeMemory read (first + previous + every N-th frame); soft aggregation

One object's path through the network, frame t from the memory of frames < t:

    key, value       = memory_head(memory_encoder(rgb, mask, other objects' masks))
    query, q_value   = query_head(query_encoder(rgb_t))
    read             = read_out(memory.read(query))      (ASPP for gvos_scm)
    decoder_input    = constrain([read, q_value], mask_{t-1})   (SCM gate for gvos_scm)
    side outputs     = decoder(decoder_input, res3, res2) [, refine(coarse) for gvos_scm]

Each object runs as its own batch row (`owner[row]` is the sample it belongs to). The
same building blocks (`encode_memory`, `encode_query`, `segment_objects`, `merge`) serve
the training clip (`forward`) and streaming inference (`models.segmenter`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.aggregate import soft_aggregate, softmax_merge
from models.backbone import EncoderFeatures, ResNetEncoder, crop_to, pad_to_stride
from models.config import resolve_config
from models.decoder import Decoder
from models.heads import KeyValueHead
from models.losses import IGNORE_INDEX, hybrid_loss, merged_cross_entropy
from models.memory import GlobalContextMemory, SpaceTimeMemory
from models.scm import ASPP, BoundaryRefinement, SpatialConstraint

Memory = GlobalContextMemory | SpaceTimeMemory


@dataclass
class ClipPrediction:
    """What a network predicts for frames 1..T-1 of a clip."""

    logits: Tensor  # float32 [B, T-1, K+1, H, W]: log of the merged per-pixel probabilities
    object_logits: (
        Tensor  # [B, T-1, K, H, W]: each object's own foreground logit (refined for gvos_scm)
    )
    object_valid: Tensor  # bool [B, K]: the object is present in the sample's first mask
    # The side outputs before `object_logits`, coarsest first, each [B, T-1, K, H, W]:
    # for gvos_scm the decoder's coarse map before refinement; empty for gc and stm.
    side_logits: tuple[Tensor, ...] = ()


class VOSNetwork(nn.Module):
    """Shared encoder / heads / decoder; subclasses pick the memory, merge and extras."""

    uses_previous_mask = False  # whether segment_objects needs the previous frame's masks

    def __init__(self, config: dict, pretrained_backbone: bool = False):
        super().__init__()
        self._config = copy.deepcopy(config)
        key_channels, value_channels = config["key_channels"], config["value_channels"]
        mask_channels = 2 if config["other_objects_mask"] else 1
        self.memory_encoder = ResNetEncoder(
            config["backbone"], mask_channels=mask_channels, pretrained=pretrained_backbone
        )
        self.query_encoder = ResNetEncoder(config["backbone"], pretrained=pretrained_backbone)
        encoder = self.query_encoder
        coordinates = config["key_coordinates"]
        self.memory_head = KeyValueHead(
            encoder.res4_channels, key_channels, value_channels, coordinates
        )
        self.query_head = KeyValueHead(
            encoder.res4_channels, key_channels, value_channels, coordinates
        )
        self.decoder = Decoder(
            2 * value_channels,
            encoder.res3_channels,
            encoder.res2_channels,
            config["decoder_channels"],
        )

    def record_train_size(self, size: int) -> VOSNetwork:
        """Record the clip size (px) the network is being trained at: the size streaming
        inference runs at by default (`VideoSegmenter(internal_size="train")`)."""
        self._config["train_size"] = int(size)
        return self

    def freeze_batchnorm(self, frozen: bool = True) -> VOSNetwork:
        """Freeze both encoders' batch norm (the papers, from ImageNet weights) or let it learn
        (a model trained from scratch); see `models.backbone`."""
        self.memory_encoder.freeze_batchnorm(frozen)
        self.query_encoder.freeze_batchnorm(frozen)
        return self

    @property
    def config(self) -> dict:
        """Plain JSON settings; `build_model(**net.config)` rebuilds this architecture."""
        return copy.deepcopy(self._config)

    # --- what the subclasses choose -------------------------------------------------------

    def new_memory(self, key: Tensor, value: Tensor) -> Memory:
        """The memory a training clip reads (`forward`)."""
        raise NotImplementedError

    def new_streaming_memory(self, key: Tensor, value: Tensor) -> Memory:
        """The memory streaming inference reads (`models.segmenter`): the training clip's,
        unless a network's inference rule differs (`gc`'s `first_frame_weight`)."""
        return self.new_memory(key, value)

    def merge(self, object_logits: Tensor, valid: Tensor) -> Tensor:
        """[B, K, H, W] foreground logits, valid [B, K] -> log-probabilities [B, K+1, H, W]."""
        return soft_aggregate(object_logits, valid)

    def read_out(self, read: Tensor) -> Tensor:
        """What the decoder gets of the memory read (gvos_scm: ASPP of it)."""
        return read

    def constrain(self, decoder_input: Tensor, previous_probs: Tensor) -> Tensor:
        """The decoder input, gated by the previous masks where a network does (gvos_scm)."""
        return decoder_input

    def side_outputs(self, coarse_logits: Tensor) -> list[Tensor]:
        """Every supervised foreground logit map, coarsest first; the last is the prediction."""
        return [coarse_logits]

    # --- building blocks shared by training and streaming ---------------------------------

    def encode_memory(
        self, frames: Tensor, object_probs: Tensor, owner: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Memory key and value of frames [N, 3, H, W] with object probabilities [N, 1, H, W].

        Row n is an object of sample `owner[n]` (None: all rows are the objects of one
        frame). With `other_objects_mask` the encoder also reads the union of the masks of
        the other objects of the same sample.
        """
        masks = object_probs
        if self._config["other_objects_mask"]:
            if owner is None:
                owner = torch.zeros(len(object_probs), dtype=torch.long, device=frames.device)
            masks = torch.cat([object_probs, other_objects(object_probs, owner)], dim=1)
        return self.memory_head(self.memory_encoder(frames, masks).res4)

    def encode_query(self, frames: Tensor) -> EncoderFeatures:
        """Query encoder features of frames [B, 3, H, W] (shared by all objects of a frame)."""
        return self.query_encoder(frames)

    def segment_objects(
        self, query: EncoderFeatures, owner: Tensor, memory: Memory, previous_probs: Tensor
    ) -> Tensor:
        """Foreground logits [N, 1, H, W] of N objects; `owner[n]` is object n's row in `query`.

        previous_probs [N, 1, H, W]: each object's probability on the previous frame.
        """
        return self.segment_sides(query, owner, memory, previous_probs)[-1]

    def segment_sides(
        self, query: EncoderFeatures, owner: Tensor, memory: Memory, previous_probs: Tensor
    ) -> list[Tensor]:
        """Every side output of `segment_objects` ([N, 1, H, W] each), the prediction last."""
        query_key, query_value = self.query_head(query.res4)
        read = self.read_out(memory.read(query_key[owner]))
        decoder_input = torch.cat([read, query_value[owner].to(read.dtype)], dim=1)
        decoder_input = self.constrain(decoder_input, previous_probs)
        coarse = self.decoder(decoder_input, query.res3[owner], query.res2[owner])
        return self.side_outputs(coarse)

    # --- the training clip ----------------------------------------------------------------

    def forward(self, frames: Tensor, first_labels: Tensor, num_objects: int) -> ClipPrediction:
        """Segment frames 1..T-1 of a clip from frame 0's labels.

        frames float32 [B, T, 3, H, W] in [0, 1]; first_labels int64 [B, H, W] (0 = background,
        1..num_objects). Frame t is predicted from the memory of frames 0..t-1, where frames
        after 0 enter the memory with the network's own soft (unthresholded) probabilities.
        """
        _check_clip(frames, first_labels, num_objects)
        batch, length, _, height, width = frames.shape
        size = (height, width)
        owner = torch.arange(batch, device=frames.device).repeat_interleave(num_objects)
        frames = pad_to_stride(frames, mode="replicate")

        first_masks = (
            F.one_hot(first_labels, num_objects + 1)[..., 1:].permute(0, 3, 1, 2).to(frames.dtype)
        )
        valid = first_masks.flatten(2).amax(dim=2) > 0
        object_probs = _rows(pad_to_stride(first_masks))
        memory = self.new_memory(*self.encode_memory(frames[:, 0][owner], object_probs, owner))
        queries = self.encode_query(frames[:, 1:].flatten(0, 1))
        sample_rows = torch.arange(batch, device=frames.device) * (length - 1)

        log_probs, sides_per_frame = [], []
        for t in range(1, length):
            query = queries.select(sample_rows + (t - 1))
            sides = self.segment_sides(query, owner, memory, object_probs)
            sides = [crop_to(s, size).reshape(batch, num_objects, height, width) for s in sides]
            merged = self.merge(sides[-1], valid)
            log_probs.append(merged)
            sides_per_frame.append(sides)
            if t < length - 1:
                object_probs = _rows(pad_to_stride(merged[:, 1:].exp()))
                memory.write(*self.encode_memory(frames[:, t][owner], object_probs, owner))
        by_side = [torch.stack(side, dim=1) for side in zip(*sides_per_frame, strict=True)]
        return ClipPrediction(
            torch.stack(log_probs, dim=1), by_side[-1], valid, side_logits=tuple(by_side[:-1])
        )

    def loss(self, pred: ClipPrediction, target_labels: Tensor) -> Tensor:
        """Cross-entropy of the merged prediction; pixels of objects absent from frame 0 ignored."""
        _check_targets(pred, target_labels)
        return merged_cross_entropy(
            pred.logits, _ignore_absent_objects(target_labels, pred.object_valid)
        )


class GCNet(VOSNetwork):
    """Fast VOS with the global context module (Li et al., ECCV 2020)."""

    def new_memory(self, key: Tensor, value: Tensor) -> GlobalContextMemory:
        return GlobalContextMemory(key, value)

    def new_streaming_memory(self, key: Tensor, value: Tensor) -> GlobalContextMemory:
        return GlobalContextMemory(
            key, value, first_frame_weight=self._config["first_frame_weight"]
        )

    def record_first_frame_weight(self, weight: float | None) -> GCNet:
        """Set the inference memory rule (None: the paper's mean); checked as a config option."""
        self._config = resolve_config(
            self._config["name"],
            self._config["size"],
            {**self._config, "first_frame_weight": weight},
        )
        return self

    def merge(self, object_logits: Tensor, valid: Tensor) -> Tensor:
        return softmax_merge(object_logits, valid)


class GVOSSCMNet(GCNet):
    """GC + ASPP, the spatial constraint module, boundary refinement and the hybrid loss.

    GVOS-SCM (Chen et al., CVM 2023). The full text was not at hand while writing this; the
    abstract says: "the prediction mask of the previous frame is helpful for the
    segmentation of the current frame, so we input it into a spatial constraint module
    (SCM), which constrains the areas of segments in the current frame", and Sec. 3.1 /
    Fig. 2 (as issue 13 reads them) place the SCM on the feature map after context
    distribution and ASPP, before the decoder: concat(feature, previous mask) -> 3x3 conv
    -> sigmoid gate -> multiply.
    Where that leaves a choice, this implementation:

    - gates the whole decoder input [ASPP(D), query value] (the feature the decoder reads),
      not ASPP(D) alone, so the query frame's own value is constrained too; the query
      key, and so the memory read, is left as it is;
    - uses each object's soft probability on the previous frame (the first mask before
      frame 1), average-pooled to stride 16, as the previous-frame mask;
    - supervises every side output with the hybrid loss (BASNet, which the paper's loss
      and refinement follow): the decoder's coarse map (its only side output, already at
      the mask size) and the refined map, with equal weights, plus the cross-entropy of
      the merged refined prediction.
    """

    uses_previous_mask = True

    def __init__(self, config: dict, pretrained_backbone: bool = False):
        super().__init__(config, pretrained_backbone)
        value_channels = config["value_channels"]
        self.aspp = ASPP(
            value_channels, config["aspp_channels"], value_channels, config["aspp_rates"]
        )
        self.spatial_constraint = SpatialConstraint(2 * value_channels)
        self.refinement = BoundaryRefinement(config["refine_channels"])

    def merge(self, object_logits: Tensor, valid: Tensor) -> Tensor:
        return soft_aggregate(object_logits, valid)

    def read_out(self, read: Tensor) -> Tensor:
        return self.aspp(read)

    def constrain(self, decoder_input: Tensor, previous_probs: Tensor) -> Tensor:
        return self.spatial_constraint(decoder_input, previous_probs)

    def side_outputs(self, coarse_logits: Tensor) -> list[Tensor]:
        return [coarse_logits, self.refinement(coarse_logits)]

    def loss(self, pred: ClipPrediction, target_labels: Tensor) -> Tensor:
        """Cross-entropy of the merged prediction + the hybrid loss of every side output.

        Each side output is scored on the maps of the objects present in frame 0.
        """
        cross_entropy = super().loss(pred, target_labels)
        num_objects = pred.object_logits.shape[2]
        object_ids = torch.arange(1, num_objects + 1, device=target_labels.device).view(
            1, 1, -1, 1, 1
        )
        object_targets = target_labels.unsqueeze(2) == object_ids  # [B, T-1, K, H, W]
        present = pred.object_valid[:, None, :].expand(-1, target_labels.shape[1], -1)
        side_maps = (*pred.side_logits, pred.object_logits)
        hybrid = sum(hybrid_loss(side[present], object_targets[present]) for side in side_maps)
        return cross_entropy + hybrid


class STMNet(VOSNetwork):
    """Space-time memory network (Oh et al., ICCV 2019), the baseline."""

    def new_memory(self, key: Tensor, value: Tensor) -> SpaceTimeMemory:
        return SpaceTimeMemory(key, value, every=self._config["memory_every"])


_NETWORKS = {"gc": GCNet, "gvos_scm": GVOSSCMNet, "stm": STMNet}


def build_model(
    name: str, size: str = "full", pretrained_backbone: bool = False, **overrides
) -> VOSNetwork:
    """One of the three networks; `size` picks the papers' (`full`) or CPU (`tiny`) settings.

    `overrides` change single options (e.g. key_channels=64, other_objects_mask=False,
    train_size=384); unknown options are refused. A config read back from a saved model goes
    through `models.config.saved_config` first (options it predates keep their old values).
    With `pretrained_backbone=True` both encoders start from torchvision's ImageNet weights.
    """
    config = resolve_config(name, size, overrides)
    return _NETWORKS[name](config, pretrained_backbone=pretrained_backbone)


def other_objects(object_probs: Tensor, owner: Tensor) -> Tensor:
    """Union of the other objects' masks of each row's sample, as STM's released code:

        others_n = clamp(sum_{m != n, owner[m] = owner[n]} p_m, max=1)

    object_probs [N, 1, H, W] (soft masks); owner [N] -> [N, 1, H, W].
    """
    peers = owner[:, None] == owner[None, :]
    peers.fill_diagonal_(False)
    others = peers.to(object_probs.dtype) @ object_probs.flatten(1)
    return others.view_as(object_probs).clamp(max=1.0)


def _rows(per_object: Tensor) -> Tensor:
    """[B, K, H, W] -> [B*K, 1, H, W]: one batch row per object."""
    return per_object.flatten(0, 1).unsqueeze(1)


def _ignore_absent_objects(target_labels: Tensor, valid: Tensor) -> Tensor:
    present = torch.cat([torch.ones_like(valid[:, :1]), valid], dim=1)  # background always counts
    pixel_present = present.gather(1, target_labels.flatten(1)).view_as(target_labels)
    return target_labels.masked_fill(~pixel_present, IGNORE_INDEX)


def _check_clip(frames: Tensor, first_labels: Tensor, num_objects: int) -> None:
    """Shapes and dtypes of a training clip, read from the tensors' metadata only.

    The values (frames in [0, 1], labels in 0..num_objects) are not checked here: that reads
    the tensors back from the device, a stall in every step. The training loop checks them on
    the CPU batch before it moves (`training.loop.check_batch`).
    """
    if (
        not isinstance(frames, Tensor)
        or frames.ndim != 5
        or frames.shape[2] != 3
        or frames.shape[1] < 2
    ):
        shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a tensor [B, T, 3, H, W] with T >= 2, got {shape}")
    if not frames.is_floating_point():
        raise ValueError(f"frames must be float in [0, 1], got dtype {frames.dtype}")
    batch, _, _, height, width = frames.shape
    if not isinstance(num_objects, int) or isinstance(num_objects, bool) or num_objects < 1:
        raise ValueError(f"num_objects must be a positive int, got {num_objects!r}")
    if not isinstance(first_labels, Tensor) or first_labels.dtype != torch.int64:
        dtype = (
            first_labels.dtype if isinstance(first_labels, Tensor) else type(first_labels).__name__
        )
        raise ValueError(f"first_labels must be an int64 tensor [B, H, W], got {dtype}")
    if tuple(first_labels.shape) != (batch, height, width):
        raise ValueError(
            f"first_labels has shape {tuple(first_labels.shape)} but frames need [B, H, W] = {(batch, height, width)}"
        )


def _check_targets(pred: ClipPrediction, target_labels: Tensor) -> None:
    """Shape and dtype of the targets (their values: see `_check_clip`)."""
    expected = (*pred.logits.shape[:2], *pred.logits.shape[3:])
    if not isinstance(target_labels, Tensor) or target_labels.dtype != torch.int64:
        raise ValueError("target_labels must be an int64 tensor [B, T-1, H, W]")
    if tuple(target_labels.shape) != expected:
        raise ValueError(
            f"target_labels has shape {tuple(target_labels.shape)}, the prediction needs {expected}"
        )
