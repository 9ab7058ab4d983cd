"""The experiment runners in benchmarks/ (targets and penalties tried on PCam, docs/results.md): their pieces."""
import numpy as np
import torch
from scipy.ndimage import gaussian_filter


def test_lbp_target_histograms_match_scikit_image(benchmark):
    """benchmarks/lbp_target_run.py's torch LBP (a reconstruction target) against scikit-image's codes, on the
    middle patch of a 48 px image (the edges are padded differently)."""
    from skimage.feature import local_binary_pattern
    run = benchmark("lbp_target_run")
    img = np.round(gaussian_filter(np.random.default_rng(1).uniform(0, 255, (48, 48)), 1.0))
    for radius in run.RADII:
        codes = local_binary_pattern(img.astype(np.uint8), 8, radius, method="uniform").astype(int)[16:32, 16:32]
        got = run.lbp_histograms(torch.tensor(img)[None, None], radius, 16)
        assert got.shape == (1, 9, run.BINS)
        np.testing.assert_allclose(got[0, 4].numpy(), np.bincount(codes.ravel(), minlength=run.BINS) / 256)


def test_colour_penalty_is_high_for_features_that_follow_colour_and_low_otherwise(benchmark):
    run = benchmark("colour_penalty_run")
    torch.manual_seed(0)
    pixels = torch.rand(64, 3, 8, 8) * torch.rand(64, 3, 1, 1)  # each image its own colour
    colour = torch.cat([pixels.mean((2, 3)), pixels.std((2, 3))], 1)
    follows = colour @ torch.randn(6, 32)
    assert run.colour_correlation(follows, pixels) > 0.9
    assert run.colour_correlation(torch.randn(64, 32), pixels) < 0.2
