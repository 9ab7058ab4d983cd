"""MAE: encode the visible patches, reconstruct the masked ones, loss on masked patches only."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sdmae.config import Config
from sdmae.data.stain import LOG_ADJUST, rgb_to_hed
from sdmae.data.transforms import PretrainTransform
from sdmae.errors import UsageError
from sdmae.methods.base import Method, loss_precision
from sdmae.methods.hog import hog_dim, hog_patches
from sdmae.methods.masking import MaskSampler, normalize_targets, patchify, split_ids
from sdmae.methods.random_teacher import RandomTeacher
from sdmae.models import MaskedDecoder, build_encoder

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B in a grey level
PIXEL_TARGETS = {"pixels": 3, "gray": 1, "haematoxylin": 1}  # channels of each pixel-valued target


def num_masked(cfg: Config, num_patches: int) -> int:
    """Masked patches per image; a ratio that masks none (nothing to reconstruct) is the user's error."""
    n = int(cfg.method.mask_ratio * num_patches)
    if n < 1:
        raise UsageError(f"config key 'method.mask_ratio' {cfg.method.mask_ratio} masks none of the {num_patches} "
                         f"patches at model.img_size {cfg.model.img_size}: nothing to reconstruct")
    return n


def freeze_input_end(encoder, patch_embed: bool, blocks: int) -> None:
    """Keep the random draw of the patch embedding (MoCo v3's random patch projection) and of the first `blocks`
    blocks: on PCam, reconstruction trained the input end towards the tiles' colour, while random filters read
    texture that carries over to other stains (docs/results.md)."""
    if blocks > len(encoder.blocks):
        raise UsageError(f"config key 'method.frozen_blocks' {blocks} is more than the {len(encoder.blocks)} blocks "
                         f"of the encoder")
    if patch_embed:
        encoder.patch_embed.requires_grad_(False)
    encoder.blocks[:blocks].requires_grad_(False)


class MaskedSampleFn:
    """Per-sample work done in data workers: augmented crop plus the sample's mask."""

    def __init__(self, cfg: Config, num_patches: int):
        self.transform = PretrainTransform(cfg.data.aug, cfg.model.img_size)
        self.masks = MaskSampler(num_patches, num_masked(cfg, num_patches))

    def __call__(self, image, gen: torch.Generator) -> dict:
        out = self.transform(image, gen)
        out.update(self.masks(gen))
        return out


class MAE(Method):
    name = "mae"
    can_reconstruct = True

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.encoder = build_encoder(m.name, m.img_size, m.pos_embed, m.drop_path, m.init)
        freeze_input_end(self.encoder, cfg.method.frozen_patch_embed, cfg.method.frozen_blocks)
        grid, p = m.img_size // self.encoder.patch_size, self.encoder.patch_size
        self.target = cfg.method.target
        self.can_reconstruct = self.target == "pixels"  # other decoders predict no pixels to picture
        if self.target == "random_features":  # a copy of the random draw, before any step
            self.teacher = RandomTeacher(self.encoder, cfg.method.target_block)
        out_dim = (p * p * PIXEL_TARGETS[self.target] if self.target in PIXEL_TARGETS
                   else {"hog": hog_dim(p), "random_features": self.encoder.embed_dim}[self.target])
        self.decoder = MaskedDecoder(self.encoder.embed_dim, grid, p, m.decoder_dim, m.decoder_depth, m.decoder_heads,
                                     m.pos_embed, init=m.init, out_dim=out_dim)
        self.target_norm = cfg.method.target_norm
        self.num_mask = num_masked(cfg, self.encoder.num_patches)  # what sample_fn's masks hide, per image
        aug = cfg.data.aug  # the input normalisation, undone for the targets (not saved: it is in the config)
        self.register_buffer("pixel_mean", torch.tensor(aug.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(aug.std).view(1, 3, 1, 1), persistent=False)

    def sample_fn(self) -> MaskedSampleFn:
        return MaskedSampleFn(self.cfg, self.encoder.num_patches)

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> [0, 1] pixels, on which the pixel, grey, haematoxylin and HOG targets are computed."""
        return images * self.pixel_std + self.pixel_mean

    def pixel_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> their patches in [0, 1] pixels (B, N, p*p*3), as the official code targets them:
        the per-patch normalisation's 1e-6 then acts on pixel scale, whatever the input normalisation."""
        return patchify(self.to_pixels(images), self.encoder.patch_size)

    def to_input_space(self, patches: torch.Tensor) -> torch.Tensor:
        """Inverse of `to_pixels`, for patches (B, K, p*p*3) in (y, x, c) order."""
        p2 = self.encoder.patch_size ** 2
        return (patches - self.pixel_mean.flatten().repeat(p2)) / self.pixel_std.flatten().repeat(p2)

    def targets(self, images: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        """Targets of the masked patches: normalised pixels (B, M, p*p*3), HOG vectors (B, M, hog_dim) or the
        random teacher's tokens (B, M, D)."""
        if self.target == "random_features":
            per_patch = self.teacher(images)
        elif self.target == "hog":
            per_patch = hog_patches(self.to_pixels(images), self.encoder.patch_size)
        elif self.target in ("gray", "haematoxylin"):
            per_patch = patchify(self.one_channel(images), self.encoder.patch_size)
        else:
            per_patch = self.pixel_patches(images)
        masked = torch.gather(per_patch, 1, ids_mask[..., None].expand(-1, -1, per_patch.shape[-1]))
        if self.target not in PIXEL_TARGETS:
            return masked
        return normalize_targets(masked, self.target_norm, PIXEL_TARGETS[self.target])

    def one_channel(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images -> (B, 1, H, W) grey level in [0, 1] or haematoxylin optical density (about 0 to 1.5):
        targets that carry the tissue's structure but not the colour of its stain, which shifts between slides."""
        rgb = self.to_pixels(images.float()).clamp(0.0, 1.0)
        if self.target == "gray":
            return torch.einsum("bchw,c->bhw", rgb, rgb.new_tensor(LUMA))[:, None]
        return rgb_to_hed(rgb)[:, :1] * LOG_ADJUST  # scikit-image's concentration units -> optical density

    def encode_decode(self, images: torch.Tensor, mask: torch.Tensor, num_mask: int | None = None):
        """`num_mask`: the masks' count when known (training); None reads it from `mask` (any ratio)."""
        ids_keep, ids_mask = split_ids(mask, num_mask)
        z = self.encoder.forward_visible(images, ids_keep)
        pred, h = self.decoder(z, ids_keep, ids_mask)
        return z, h, pred, ids_keep, ids_mask

    def reconstruction(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(encoder tokens z, decoder features h of the visible tokens, MSE on the masked patches, logged parts).

        `loss_rec_rel` is the MSE over that of predicting the batch's mean target for every masked patch: 1 means
        the decoder learned nothing beyond the average patch, 0 a perfect reconstruction."""
        images, mask = batch["image"], batch["mask"]
        z, h, pred, _, ids_mask = self.encode_decode(images, mask, self.num_mask)
        with torch.no_grad():  # "image_clean": the crop without colour jitter (`data.aug.jitter_targets=false`)
            target = loss_precision(self.targets(batch.get("image_clean", images), ids_mask))
        loss = F.mse_loss(loss_precision(pred), target)
        with torch.no_grad():
            baseline = (target - target.mean(dim=(0, 1))).square().mean()
            parts = {"loss_rec": loss.detach(), "loss_rec_rel": loss.detach() / baseline.clamp_min(1e-12)}
        return z, h, loss, parts

    def forward(self, batch: dict) -> dict:
        _, _, loss_rec, parts = self.reconstruction(batch)
        return {"loss": loss_rec, **parts}
