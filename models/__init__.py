"""Video object segmentation networks: GC, GVOS-SCM and the STM baseline.

from models import build_model, VideoSegmenter
net = build_model("gc", size="tiny")
pred = net(frames, first_labels, num_objects)      # training clip
loss = net.loss(pred, target_labels)
segmenter = VideoSegmenter(net)                    # streaming inference, at the model's
                                                   # train_size (internal_size=...)
"""

from models.backbone import PretrainedWeightsUnavailable
from models.config import MODEL_NAMES, SIZES
from models.networks import ClipPrediction, VOSNetwork, build_model
from models.segmenter import FrameResult, VideoSegmenter

__all__ = [
    "MODEL_NAMES",
    "SIZES",
    "ClipPrediction",
    "FrameResult",
    "PretrainedWeightsUnavailable",
    "VOSNetwork",
    "VideoSegmenter",
    "build_model",
]
