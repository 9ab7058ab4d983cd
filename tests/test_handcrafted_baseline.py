"""benchmarks/handcrafted_baseline.py: LBP texture features tell apart tiles whose colour says nothing of the class."""
import numpy as np
from scipy.ndimage import gaussian_filter

from sdmae.config import load_eval_config


def _tiles(rng, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Class 0 smooth blobs, class 1 fine grain, both with the same contrast; a random tint and brightness per tile."""
    y = rng.integers(0, 2, n)
    tiles = []
    for label in y:
        noise = gaussian_filter(rng.normal(size=(32, 32)), sigma=2.0 if label == 0 else 0.5)
        noise = (noise - noise.mean()) / noise.std()
        tint = rng.uniform(0.3, 0.7, 3)
        tiles.append(np.clip((tint + 0.1 * noise[..., None]) * 255, 0, 255).astype(np.uint8))
    return tiles, y


def _table(mod, tiles):
    rows = [mod.tile_features(t) for t in tiles]
    return {g: np.stack([r[g] for r in rows]) for g in rows[0]}


def test_texture_finds_the_class_that_colour_misses(benchmark):
    mod, rng, ecfg = benchmark("handcrafted_baseline"), np.random.default_rng(0), load_eval_config([])
    (a, ya), (b, yb) = _tiles(rng, 120), _tiles(rng, 120)
    ta, tb = _table(mod, a), _table(mod, b)
    assert ta["colour"].shape == (120, 6) and ta["stain"].shape == (120, 7) and ta["texture"].shape == (120, 56)
    colour = mod.probe(mod.columns(ta, "colour"), ya, mod.columns(tb, "colour"), yb, 2, ecfg)
    texture = mod.probe(mod.columns(ta, "texture"), ya, mod.columns(tb, "texture"), yb, 2, ecfg)
    assert max(colour.values()) < 0.7, colour
    assert min(texture.values()) > 0.95, texture
    assert mod.columns(ta, "colour+texture").shape == (120, 62)
    sizes = [n + 2 for n, _ in mod.LBP_SCALES] * 2  # grey, then haematoxylin, at each scale
    for hist in np.split(ta["texture"], np.cumsum(sizes)[:-1], axis=1):
        assert np.allclose(hist.sum(1), 1.0)
