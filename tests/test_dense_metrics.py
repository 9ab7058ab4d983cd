"""Dense-task metrics against hand-made masks and boxes, with the expected values worked out by hand."""
import numpy as np
import pytest

from sdmae.dense.det_metrics import box_iou, coco_metrics, match
from sdmae.dense.seg_metrics import aji, confusion, panoptic_quality, pixel_scores


def square(shape, top, left, size, value=1):
    m = np.zeros(shape, np.int32)
    m[top:top + size, left:left + size] = value
    return m


# --- pixel metrics ---------------------------------------------------------------------------------------

def test_pixel_scores_perfect_empty_and_shifted():
    true = square((10, 10), 2, 2, 4)
    perfect = pixel_scores(confusion(true, true))
    assert perfect == {"miou": 1.0, "iou_background": 1.0, "iou_nuclei": 1.0, "dice": 1.0, "pixel_accuracy": 1.0}

    empty = pixel_scores(confusion(np.zeros_like(true), true))
    assert empty["dice"] == 0.0 and empty["iou_nuclei"] == 0.0
    assert empty["iou_background"] == pytest.approx(84 / 100)
    assert empty["pixel_accuracy"] == pytest.approx(0.84)

    # one column to the right: 12 nuclei pixels shared, union 20; background shares 80 of 88
    shifted = pixel_scores(confusion(square((10, 10), 2, 3, 4), true))
    assert shifted["iou_nuclei"] == pytest.approx(12 / 20)
    assert shifted["dice"] == pytest.approx(2 * 12 / 32)
    assert shifted["iou_background"] == pytest.approx(80 / 88)
    assert shifted["miou"] == pytest.approx((12 / 20 + 80 / 88) / 2)
    assert shifted["pixel_accuracy"] == pytest.approx(92 / 100)


def test_confusion_rows_are_true_classes():
    true = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 0, 0, 1]])
    assert confusion(pred, true).tolist() == [[1, 1], [1, 1]]
    assert confusion(np.zeros_like(true), true).tolist() == [[2, 0], [2, 0]]


# --- instance metrics ------------------------------------------------------------------------------------

def worked_example():
    """True: A (4x4 at 0,0; 16 px) and B (2x2 at 6,6; 4 px). Predicted: P1 = A moved one column right
    (12 px shared, union 20) and P2 (3x3 at 6,0; 9 px), a false positive touching nothing."""
    true = square((10, 10), 0, 0, 4, 1) + square((10, 10), 6, 6, 2, 2)
    pred = square((10, 10), 0, 1, 4, 1) + square((10, 10), 6, 0, 3, 2)
    return true, pred


def test_aji_worked_example():
    true, pred = worked_example()
    # C = 12 (A with P1); U = 20 (A with P1) + 4 (B, unmatched) + 9 (P2, never used) = 33
    assert aji(true, pred) == pytest.approx(12 / 33)


def test_aji_counts_a_merged_prediction_for_each_nucleus():
    """Kumar et al.'s AJI lets one prediction serve several nuclei: a blob merging two 4-px nuclei (8 px)
    pairs with both, C = 4 + 4, U = 8 + 8."""
    true = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    pred = np.ones((2, 4), np.int32)
    assert aji(true, pred) == pytest.approx(0.5)


def test_instance_metrics_perfect_empty_and_label_order():
    true, _ = worked_example()
    relabelled = np.where(true == 1, 7, np.where(true == 2, 3, 0))
    assert aji(true, relabelled) == 1.0
    assert panoptic_quality(true, relabelled)["pq"] == 1.0
    assert aji(true, np.zeros_like(true)) == 0.0
    pq = panoptic_quality(true, np.zeros_like(true))
    assert pq["pq"] == 0.0 and pq["fn"] == 2 and pq["tp"] == 0
    nothing = np.zeros((5, 5), np.int32)
    assert aji(nothing, nothing) == 1.0 and panoptic_quality(nothing, nothing)["pq"] == 1.0


def test_panoptic_quality_worked_example():
    true, pred = worked_example()
    pq = panoptic_quality(true, pred)
    # A-P1 match with IoU 0.6 > 0.5; P2 is a false positive, B a false negative
    assert (pq["tp"], pq["fp"], pq["fn"]) == (1, 1, 1)
    assert pq["sq"] == pytest.approx(0.6)
    assert pq["dq"] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert pq["pq"] == pytest.approx(0.3)
    # shifted by two columns: IoU 8/24 is no match
    far = square((10, 10), 0, 2, 4)
    assert panoptic_quality(square((10, 10), 0, 0, 4), far)["tp"] == 0


# --- box metrics -----------------------------------------------------------------------------------------

def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[2, 0, 12, 10], [20, 20, 30, 30]], np.float32)
    assert box_iou(a, b)[0].tolist() == pytest.approx([80 / 120, 0.0])


def test_coco_perfect_empty_and_shifted():
    true = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    perfect = coco_metrics(true, [(true[0].copy(), np.array([0.9, 0.8]))])
    assert perfect == {"map": 1.0, "map50": 1.0, "map75": 1.0, "recall": 1.0, "recall50": 1.0}
    empty = coco_metrics(true, [(np.zeros((0, 4), np.float32), np.zeros(0))])
    assert empty == {"map": 0.0, "map50": 0.0, "map75": 0.0, "recall": 0.0, "recall50": 0.0}
    # every box moved 2 px right: IoU 80/120 = 0.667 passes thresholds 0.50, 0.55, 0.60, 0.65 of ten
    shifted = coco_metrics(true, [(true[0] + np.array([2, 0, 2, 0], np.float32), np.array([0.9, 0.8]))])
    assert shifted["map50"] == 1.0 and shifted["map75"] == 0.0
    assert shifted["map"] == pytest.approx(0.4)
    assert shifted["recall"] == pytest.approx(0.4)


def test_coco_ranked_detections_by_hand():
    """Two nuclei, three detections: 0.9 hits, 0.8 misses, 0.7 hits. Precision 1, 1/2, 2/3 at recall 1/2,
    1/2, 1; the envelope is 1 up to recall 0.5 (51 of the 101 points) and 2/3 above (50 points)."""
    true = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], np.float32)
    m = coco_metrics(true, [(boxes, np.array([0.9, 0.8, 0.7]))])
    assert m["map50"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert m["recall50"] == 1.0


def test_match_gives_each_true_box_to_one_detection():
    true = np.array([[0, 0, 10, 10]], np.float32)
    boxes = np.array([[0, 0, 10, 9], [0, 0, 10, 10]], np.float32)  # the better box scores lower
    scores, tp = match(true, boxes, np.array([0.9, 0.5]))
    assert scores.tolist() == [0.9, 0.5]
    assert tp[0].tolist() == [True, False]  # the first in score order takes it; the duplicate is a false positive


def test_coco_pools_images():
    true = [np.array([[0, 0, 10, 10]], np.float32), np.zeros((0, 4), np.float32)]
    preds = [(np.array([[0, 0, 10, 10]], np.float32), np.array([0.5])),
             (np.array([[0, 0, 10, 10]], np.float32), np.array([0.9]))]  # a false positive, ranked first
    m = coco_metrics(true, preds)
    # ranks: FP (0.9) then TP (0.5): precision 1/2 at recall 1 -> AP 0.5 at every threshold
    assert m["map"] == pytest.approx(0.5) and m["recall"] == 1.0
