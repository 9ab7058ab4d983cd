"""`sdmae analyze false-negatives`: closed forms against enumeration, sampling, similarities, command line."""
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from sdmae.analyze import expected_false_negatives, measured_false_negatives, sampled_batches, similarity_report
from sdmae.cli import main


def test_expected_false_negatives_equal_enumeration_of_all_batches():
    labels = np.array([0, 0, 0, 1, 1, 2])
    for batch in (2, 3, 4):
        shares, anys = [], []
        for a in range(len(labels)):
            others = [i for i in range(len(labels)) if i != a]
            for rest in itertools.combinations(others, batch - 1):
                same = sum(labels[i] == labels[a] for i in rest)
                shares.append(same / (batch - 1))
                anys.append(same > 0)
        e = expected_false_negatives(np.bincount(labels), batch)
        assert e["share"] == pytest.approx(np.mean(shares))
        assert e["p_any"] == pytest.approx(np.mean(anys))
        assert e["per_anchor"] == pytest.approx(np.mean(shares) * (batch - 1))


def test_sampled_batches_measure_the_expected_share():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    drawn = sampled_batches(len(labels), 16, 300, seed=1)
    assert len(drawn) == 300 and all(len(b) == 16 and len(set(b.tolist())) == 16 for b in drawn)
    assert sampled_batches(len(labels), 16, 300, seed=1)[7].tolist() == drawn[7].tolist()
    e, m = expected_false_negatives(np.bincount(labels), 16), measured_false_negatives(labels, drawn)
    assert m["share"] == pytest.approx(e["share"], abs=0.01)
    assert m["p_any"] == pytest.approx(e["p_any"], abs=0.02)


def test_similarity_report_sees_class_structure():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    centres = rng.normal(size=(2, 16)) * 3
    clustered = centres[labels] + rng.normal(size=(200, 16))
    drawn = sampled_batches(200, 20, 20, seed=0)
    s = similarity_report(clustered, labels, drawn, temperature=0.2)
    assert s["cos_false_negatives"] > s["cos_true_negatives"] and s["p_false_closer"] > 0.95
    assert s["repulsion_share"] > measured_false_negatives(labels, drawn)["share"]
    r = similarity_report(rng.normal(size=(200, 16)), labels, drawn, temperature=0.2)
    assert abs(r["p_false_closer"] - 0.5) < 0.05


def class_tree(root, counts, size=32):
    rng = np.random.default_rng(0)
    for c, n in enumerate(counts):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_command_reports_and_rejects_bad_input(tmp_path, capsys):
    data = class_tree(tmp_path / "tree", [6, 2])
    out = tmp_path / "fn.json"
    assert main(["analyze", "false-negatives", "--data", str(data), "--batch-size", "4", "--batches", "20",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["class_counts"] == [6, 2] and report["expected"]["share"] == pytest.approx((6 * 5 + 2 * 1) / 8 / 7)
    assert "false negatives per anchor" in capsys.readouterr().out
    assert main(["analyze", "false-negatives", "--data", str(data), "--batch-size", "9"]) == 2
    assert "larger than the 8 labelled tiles" in capsys.readouterr().err
    assert main(["analyze", "false-negatives", "--data", str(tmp_path / "missing")]) == 2
    assert main(["analyze", "false-negatives", "--data", str(data), "--ckpt", str(tmp_path / "no.pt")]) == 2
