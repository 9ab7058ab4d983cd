"""benchmarks/pooling_and_input.py: its full-grid feature is sdmae eval's, and its colour-free inputs drop a colour cast."""
import numpy as np
import pytest
import torch

from sdmae.encoders import load_encoder
from sdmae.eval.features import feature_model, normalisation, pooled

SMALL = ["model.name=vit_tiny_patch16", "model.img_size=64"]  # a 4 x 4 token grid


def test_full_grid_is_sdmae_evals_official_feature_and_the_centre_differs(benchmark):
    mod = benchmark("pooling_and_input")
    enc = load_encoder(init="random", overrides=SMALL)
    model, x = feature_model(enc, "official"), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)[:, model.num_prefix_tokens:].reshape(3, 4, 4, -1).numpy()
        official = pooled(model, x).numpy()
    np.testing.assert_allclose(mod.centre_pooled(tokens, 4), official, atol=1e-5)
    assert np.abs(mod.centre_pooled(tokens, 2) - official).max() > 0.1
    with pytest.raises(ValueError, match="--keep 3"):
        mod.centre_pooled(tokens, 3)


def test_colour_free_inputs_ignore_a_colour_cast_that_changes_sdmae_evals_input(benchmark):
    mod = benchmark("pooling_and_input")
    mean, std = normalisation(load_encoder(init="random", overrides=SMALL))
    tile = torch.randint(40, 160, (1, 3, 64, 64), dtype=torch.uint8)
    cast = (tile.float() * torch.tensor([1.3, 0.8, 1.1]).view(1, 3, 1, 1) + torch.tensor([20.0, 5.0, 0.0]).view(1, 3, 1, 1))
    cast = cast.round().to(torch.uint8)
    as_is = [mod.encoder_input(t, "as_is", mean, std) for t in (tile, cast)]
    assert (as_is[0] - as_is[1]).abs().mean() > 0.2
    inst = [mod.encoder_input(t, "instance", mean, std) for t in (tile, cast)]
    assert torch.allclose(inst[0], inst[1], atol=0.02)
    grey = mod.encoder_input(tile, "grey", mean, std)
    assert torch.equal(grey[:, 0], grey[:, 2]) and abs(float(grey.mean())) < 1e-4
    with pytest.raises(ValueError, match="--input 'sepia'"):
        mod.encoder_input(tile, "sepia", mean, std)
