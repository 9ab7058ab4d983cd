"""sdmae's MAE step against lightly's (PyPI `lightly`, its timm-based masked ViT and MAE decoder), same shapes,
one optimiser step at a time on the CPU, alternating in one process over several rounds.

Shapes (both): ViT-S/16 at 224 px (or --model / --size), no class token, decoder 192 wide x 4 blocks x 3 heads,
mask ratio 0.75, batch 16, fp32, AdamW. What differs in the work, by design of each library:
- lightly embeds all 196 patches, adds the position embedding, then keeps 49 (`MaskedVisionTransformerTIMM.
  encode(idx_keep=...)`); sdmae embeds only the kept patches (the patch convolution as one matmul on them);
- lightly's encoder position embedding is a trained parameter (sine-cosine initialised); sdmae's is fixed;
- lightly's example targets raw pixels; sdmae's default, used here, normalises each patch per channel
  (a few elementwise passes over the masked patches);
- lightly's step is the plain `torch.optim.AdamW(model.parameters())` of its example; sdmae's is its own
  (fused AdamW, no weight decay on biases and norms) and includes the uint8 -> float normalisation.
No pass line: it prints both rates and their ratio (min / median / max over rounds).

Usage (a venv with both; lightly's own venv with `pip install -e .` of sdmae works):
    pip install "lightly==1.6.0" "torch<=2.14.1"
    python benchmarks/vs_lightly.py [--rounds 5] [--steps 3] [--batch 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F


def sdmae_step(model: str, size: int, batch: int):
    from sdmae.config import load_config
    from sdmae.data.batch import move_batch
    from sdmae.methods import build_method
    from sdmae.train.bench import synthetic_batch
    from sdmae.train.optim import build_optimizer
    from sdmae.train.step import Stepper

    cfg = load_config(None, [f"model.name={model}", f"model.img_size={size}", "method.name=mae",
                             "model.decoder_dim=192", "model.decoder_depth=4", "model.decoder_heads=3",
                             "method.mask_ratio=0.75", f"data.batch_size={batch}", "train.device=cpu"])
    cpu = torch.device("cpu")
    method = build_method(cfg).train()
    opt = build_optimizer(method, 1.5e-4, 0.05, (0.9, 0.95), cpu)
    stepper = Stepper(method, opt, torch.amp.GradScaler("cpu", enabled=False), "fp32", cpu)
    data = synthetic_batch(method, cfg, 0)

    def step() -> None:
        stepper.forward_backward(move_batch(data, cpu, cfg))
        stepper.optimizer_step(1.5e-4, 0, 10, 10)

    return step


def lightly_step(model: str, size: int, batch: int):
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.models.modules.masked_autoencoder_timm import MAEDecoderTIMM
    from timm.models.vision_transformer import VisionTransformer

    from sdmae.models.vit import ARCHS

    patch, width, depth, heads = ARCHS[model]
    vit = VisionTransformer(img_size=size, patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                            class_token=False, global_pool="avg", num_classes=0)
    backbone = MaskedVisionTransformerTIMM(vit=vit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MAEDecoderTIMM is deprecated in favour of a bare decoder plus layers
        decoder = MAEDecoderTIMM(num_patches=vit.patch_embed.num_patches, patch_size=patch, embed_dim=width,
                                 decoder_embed_dim=192, decoder_depth=4, decoder_num_heads=3, num_prefix_tokens=0)
    params = list(backbone.parameters()) + list(decoder.parameters())
    opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    seq = backbone.sequence_length
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))

    def step() -> None:
        keep, masked = utils.random_token_mask((batch, seq), mask_ratio=0.75, mask_class_token=True)
        z = backbone.encode(images=images, idx_keep=keep)
        x = utils.set_at_index(utils.repeat_token(decoder.mask_token, (batch, seq)), keep, decoder.embed(z))
        pred = decoder.predict(utils.get_at_index(decoder.decode(x), masked))
        target = utils.get_at_index(utils.patchify(images, patch), masked)
        F.mse_loss(pred, target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def rate(step, steps: int, batch: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_small_patch16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per library per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ours, theirs = sdmae_step(a.model, a.size, a.batch), lightly_step(a.model, a.size, a.batch)
    ours(), theirs()  # warm-up
    rows = []
    for r in range(a.rounds):
        o, t = rate(ours, a.steps, a.batch), rate(theirs, a.steps, a.batch)
        rows.append((o, t))
        print(f"round {r + 1}: sdmae {o:.2f} img/s, lightly {t:.2f} img/s, ratio {o / t:.2f}", flush=True)
    ratios = [o / t for o, t in rows]
    import lightly

    from sdmae.train.bench import device_name

    out = {"cpu": device_name(torch.device("cpu")), "threads": a.threads, "torch": torch.__version__, "lightly": lightly.__version__,
           "model": a.model, "img_size": a.size, "batch": a.batch, "rounds": a.rounds, "steps": a.steps,
           "sdmae_images_per_s": statistics.median(o for o, _ in rows),
           "lightly_images_per_s": statistics.median(t for _, t in rows),
           "ratio_min": min(ratios), "ratio_median": statistics.median(ratios), "ratio_max": max(ratios)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
