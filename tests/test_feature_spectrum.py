"""benchmarks/feature_spectrum.py: re-weighting the directions finds class signal that a strong direction hides."""
import numpy as np


def _features(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three class-free directions with std 20 (the tile's colour), the class in a weak one, six noise ones."""
    y = rng.integers(0, 2, n)
    x = np.concatenate([rng.normal(0, 20, (n, 3)), (2 * y - 1)[:, None] + rng.normal(0, 0.3, (n, 1)),
                        rng.normal(0, 0.3, (n, 6))], axis=1)
    return x, y


def test_weak_direction_signal_is_found_by_whitening_and_not_by_knn(benchmark):
    rng = np.random.default_rng(0)
    (xa, ya), (xb, yb) = _features(rng, 400), _features(rng, 400)
    row = benchmark("feature_spectrum").spectrum_row(xa, ya, xb, yb)
    assert row["pc1_5"] > 0.95 and row["erank"] < 3.5
    assert row["knn"] < 0.7  # the colour direction decides the neighbours
    for key in ("whitened64", "drop3", "standardised"):
        assert row[key] > 0.95, key


def test_colour_share_is_one_for_features_made_of_colour_and_zero_for_unrelated_ones(benchmark):
    mod, rng = benchmark("feature_spectrum"), np.random.default_rng(1)
    colour = rng.uniform(0, 1, (300, 6))
    made_of_colour = colour @ rng.normal(size=(6, 32)) + 3.0
    assert mod.colour_share(made_of_colour, colour) > 0.999
    assert mod.colour_share(rng.normal(size=(300, 32)), colour) < 0.05
