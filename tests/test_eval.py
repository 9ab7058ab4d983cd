"""Evaluation maths on small arrays: metrics against scikit-learn and hand counts, kNN, SimpleShot, linear probes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from sdmae.config import ConfigError, load_eval_config
from sdmae.eval.fewshot import draw_support, simpleshot_probs
from sdmae.eval.knn import knn_probs
from sdmae.eval.linear import fit_fast, predict_proba, train_paper
from sdmae.eval.metrics import aggregate, classification_metrics


pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (n_classes, dim)) * 4
    x = np.concatenate([centres[c] + spread * rng.normal(0, 1, (n_per_class, dim)) for c in range(n_classes)])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return x.astype(np.float32), y


def test_metrics_hand_counted_binary():
    y_true = [0, 0, 0, 1, 1, 1, 1, 1]
    y_pred = [0, 0, 1, 1, 1, 1, 0, 1]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4],
                      [0.35, 0.65]])
    m = classification_metrics(y_true, y_pred, probs, ["neg", "pos"])
    assert m["confusion_matrix"] == [[2, 1], [1, 4]]  # rows = true class
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["per_class_recall"] == pytest.approx([2 / 3, 4 / 5])
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # positives ranked against negatives: 0.7, 0.8, 0.9, 0.65 beat all three negatives (0.1, 0.2, 0.6); 0.4 beats two
    assert m["auroc"] == pytest.approx((4 * 3 + 2) / 15)
    assert m["n_test"] == 8 and m["classes"] == ["neg", "pos"]


def test_metrics_agree_with_sklearn_multiclass():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 300)
    logits = rng.normal(0, 1, (300, 4)) + 1.5 * np.eye(4)[y_true]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y_pred = probs.argmax(1)
    m = classification_metrics(y_true, y_pred, probs, list("abcd"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["auroc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    cm = np.array(m["confusion_matrix"])
    assert np.trace(cm) / cm.sum() == pytest.approx(m["accuracy"])


def test_macro_f1_counts_a_class_predicted_but_absent_from_the_test_labels():
    y_true, y_pred = [0, 0, 1, 1], [0, 2, 1, 1]  # class 2 is predicted once, never true
    m = classification_metrics(y_true, y_pred, None, list("abc"))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro")) == pytest.approx(5 / 9)


def test_metrics_absent_class_and_single_class_auroc():
    m = classification_metrics([0, 0, 2], [0, 1, 2], np.full((3, 3), 1 / 3), ["a", "b", "c"])
    assert m["per_class_recall"][1] is None  # class b never occurs in the test set
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert classification_metrics([1, 1], [1, 0], np.array([[0.2, 0.8], [0.6, 0.4]]), ["a", "b"])["auroc"] is None


def test_aggregate_mean_std_and_consistent_confusion_matrix():
    r1 = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], None, ["a", "b"])
    r2 = classification_metrics([0, 0, 1, 1], [0, 0, 1, 0], None, ["a", "b"])
    agg = aggregate([{"seed": 0, **r1}, {"seed": 1, **r2}])
    assert agg["accuracy"] == pytest.approx(0.75) and agg["std"]["accuracy"] == pytest.approx(0.0)
    assert agg["balanced_accuracy"] == pytest.approx(0.75)
    assert agg["n_test"] == 4 and isinstance(agg["n_test"], int)
    cm = np.array(agg["confusion_matrix"])
    assert cm.tolist() == [[1.5, 0.5], [0.5, 1.5]]
    assert np.trace(cm) / cm.sum() == pytest.approx(agg["accuracy"])
    assert np.mean(np.diag(cm) / cm.sum(1)) == pytest.approx(agg["balanced_accuracy"])
    r3 = {**r1, "accuracy": 0.5}
    assert aggregate([r1, r3])["std"]["accuracy"] == pytest.approx(0.125 * 2 ** 0.5)  # sample std (ddof 1)


def test_knn_known_answer_and_weights():
    x_train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.2, 0.8]], dtype=np.float32)
    y_train = np.array([0, 0, 1, 1, 1])
    x_test = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    probs = knn_probs(x_train, y_train, x_test, 2, k=3, temperature=0.07, center=False)
    assert probs.argmax(1).tolist() == [0, 1]
    # by hand for the first test point: its 3 nearest are train 0, 1 (class 0) and 4 (class 1)
    t = x_test[0] / np.linalg.norm(x_test[0])
    tr = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)
    w = np.exp(tr @ t / 0.07)
    assert probs[0, 0] == pytest.approx((w[0] + w[1]) / (w[0] + w[1] + w[4]), rel=1e-5)
    # k larger than the training set: every training item votes
    assert knn_probs(x_train, y_train, x_test, 2, k=50).shape == (2, 2)


def test_knn_separable_clusters_are_perfect():
    x, y = blobs(30, 3, 8, 0.3, seed=2)
    idx = np.random.default_rng(0).permutation(len(y))
    tr, te = idx[:60], idx[60:]
    probs = knn_probs(x[tr], y[tr], x[te], 3, k=20)
    assert (probs.argmax(1) == y[te]).all()
    assert np.allclose(probs.sum(1), 1)


def test_simpleshot_prototypes_by_hand_and_separable():
    s = np.array([[2.0, 0.0], [0.0, 2.0]])  # one shot per class; mean (1, 1) -> (1,-1)/√2 and (-1,1)/√2
    probs = simpleshot_probs(s, np.array([0, 1]), np.array([[3.0, 0.5], [0.2, 4.0]]), 2)
    assert probs.argmax(1).tolist() == [0, 1]
    x, y = blobs(40, 4, 16, 0.4, seed=3)
    rng = np.random.default_rng(0)
    sup = draw_support(y, 4, 5, rng)
    assert np.bincount(y[sup]).tolist() == [5, 5, 5, 5]
    assert (simpleshot_probs(x[sup], y[sup], x, 4).argmax(1) == y).mean() > 0.97


def test_linear_protocols_separable_and_shuffled():
    ecfg = load_eval_config(["eval.linear_epochs=30", "eval.linear_warmup_epochs=3", "eval.linear_batch_size=64"])
    x, y = blobs(150, 2, 16, 1.0, seed=4)
    rng = np.random.default_rng(5)
    idx = rng.permutation(len(y))
    tr, te = idx[:200], idx[200:]
    model, c, scores = fit_fast(x[tr], y[tr], None, None, ecfg, seed=0)
    assert c in ecfg.linear_cs and len(scores) == len(ecfg.linear_cs)
    assert balanced_accuracy_score(y[te], predict_proba(model, x[te], 2).argmax(1)) > 0.97
    head = train_paper(x[tr], y[tr], 2, ecfg, seed=0)
    with torch.no_grad():
        pred = head(torch.from_numpy(x[te])).argmax(1).numpy()
    assert balanced_accuracy_score(y[te], pred) > 0.97
    # labels carrying no information: chance level
    xr = rng.normal(0, 1, (600, 16)).astype(np.float32)
    yr = rng.integers(0, 2, 600)
    model, _, _ = fit_fast(xr[:400], yr[:400], None, None, ecfg, seed=0)
    assert abs(balanced_accuracy_score(yr[400:], model.predict(xr[400:])) - 0.5) < 0.12


def test_eval_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="eval.linear"):
        load_eval_config(["eval.linear=slow"])
    with pytest.raises(ConfigError, match="eval.knn_k"):
        load_eval_config(["eval.knn_k=0"])
    with pytest.raises(ConfigError, match="eval.finetune.nope"):
        load_eval_config(["eval.finetune.nope=1"])


def test_official_randaugment_survives_zero_bit_posterize():
    """'rand-m9-mstd0.5-inc1' at magnitude 10 asks for 0-bit posterize, which Pillow 11 refuses; the fine-tuning
    transform gives a black image there, as Pillow < 11 did, and keeps other bit counts as they were."""
    from PIL import Image
    from timm.data import create_transform

    from sdmae.eval.finetune import pillow_safe_posterize

    t = pillow_safe_posterize(create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5-inc1"))
    op = next(o for r in t.transforms if hasattr(r, "ops") for o in r.ops if o.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    img = Image.new("RGB", (32, 32), (200, 120, 90))
    assert op(img).getextrema() == ((0, 0), (0, 0), (0, 0))
    op.magnitude = 5  # 4 - int(5 / 10 * 4) = 2 bits: 200 -> 192, 120 -> 64, 90 -> 64
    assert op(img).getpixel((0, 0)) == (192, 64, 64)
