"""The reference for the DAVIS metrics: the official davis2017-evaluation code, transcribed.

`official_*` is a faithful transcription of davis2017-evaluation's `metrics.py` (`db_eval_iou`,
`f_measure`, `_seg2bmap`), `utils.db_statistics` and the semi-supervised loop of
`evaluation.py`, using cv2 and scikit-image (dev-only dependencies) as the original does.
The only change: `np.bool` (removed from numpy) is `bool`.
"""

# ruff: noqa: SIM108, E741  (kept as the original is written)
from __future__ import annotations

import warnings

import cv2
import numpy as np
from skimage.morphology import disk


def official_db_eval_iou(annotation, segmentation):
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    void_pixels = np.zeros_like(segmentation)
    inters = np.sum((segmentation & annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    union = np.sum((segmentation | annotation) & np.logical_not(void_pixels), axis=(-2, -1))
    j = inters / union
    if j.ndim == 0:
        j = 1 if np.isclose(union, 0) else j
    else:
        j[np.isclose(union, 0)] = 1
    return j


def official_seg2bmap(seg):
    seg = seg.astype(bool)
    seg[seg > 0] = 1
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def official_f_measure(foreground_mask, gt_mask, bound_th=0.008):
    void_pixels = np.zeros_like(foreground_mask).astype(bool)
    bound_pix = (
        bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(foreground_mask.shape))
    )
    fg_boundary = official_seg2bmap(foreground_mask * np.logical_not(void_pixels))
    gt_boundary = official_seg2bmap(gt_mask * np.logical_not(void_pixels))
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), disk(bound_pix).astype(np.uint8))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision = 1
        recall = 0
    elif n_fg > 0 and n_gt == 0:
        precision = 0
        recall = 1
    elif n_fg == 0 and n_gt == 0:
        precision = 1
        recall = 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        F = 0
    else:
        F = 2 * precision * recall / (precision + recall)
    return F


def official_db_statistics(per_frame_values):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        M = np.nanmean(per_frame_values)
        O = np.nanmean(per_frame_values > 0.5)  # noqa: E741
    N_bins = 4
    ids = np.round(np.linspace(1, len(per_frame_values), N_bins + 1) + 1e-10) - 1
    ids = ids.astype(np.uint8)
    D_bins = [per_frame_values[ids[i] : ids[i + 1] + 1] for i in range(0, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        D = np.nanmean(D_bins[0]) - np.nanmean(D_bins[3])
    return M, O, D


def official_scores(truth_labels, predicted_labels):
    """Per object: ((JM, JR, JD), (FM, FR, FD)) as DAVISEvaluation computes them."""
    num_objects = int(np.max(truth_labels[0]))
    truth = np.stack(truth_labels)[1:-1]
    prediction = np.stack(predicted_labels)[1:-1]
    results = []
    for object_id in range(1, num_objects + 1):
        gt, res = truth == object_id, prediction == object_id
        j = np.array([official_db_eval_iou(gt[t], res[t]) for t in range(len(gt))], dtype=float)
        f = np.array([official_f_measure(res[t], gt[t]) for t in range(len(gt))], dtype=float)
        results.append((official_db_statistics(j), official_db_statistics(f)))
    return results
