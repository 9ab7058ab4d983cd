"""MAE: encode the visible patches, reconstruct the masked ones, loss on masked patches only."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdmae.config import Config
from sdmae.data.transforms import PretrainTransform
from sdmae.methods.masking import MaskSampler, normalize_targets, patchify, split_ids
from sdmae.models import MaskedDecoder, build_encoder


def num_masked(cfg: Config, num_patches: int) -> int:
    return int(cfg.method.mask_ratio * num_patches)


class MaskedSampleFn:
    """Per-sample work done in data workers: augmented crop plus the sample's mask."""

    def __init__(self, cfg: Config, num_patches: int):
        self.transform = PretrainTransform(cfg.data.aug, cfg.model.img_size)
        self.masks = MaskSampler(num_patches, num_masked(cfg, num_patches))

    def __call__(self, image, gen: torch.Generator) -> dict:
        out = self.transform(image, gen)
        out.update(self.masks(gen))
        return out


class MAE(nn.Module):
    name = "mae"

    def __init__(self, cfg: Config):
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.encoder = build_encoder(m.name, m.img_size, m.pos_embed, m.drop_path)
        grid = m.img_size // self.encoder.patch_size
        self.decoder = MaskedDecoder(self.encoder.embed_dim, grid, self.encoder.patch_size, m.decoder_dim,
                                     m.decoder_depth, m.decoder_heads, m.pos_embed)
        self.target_norm = cfg.method.target_norm
        self.num_mask = num_masked(cfg, self.encoder.num_patches)  # what sample_fn's masks hide, per image

    def sample_fn(self) -> MaskedSampleFn:
        return MaskedSampleFn(self.cfg, self.encoder.num_patches)

    def targets(self, images: torch.Tensor, ids_mask: torch.Tensor) -> torch.Tensor:
        """Normalised pixel targets of the masked patches: (B, M, p*p*3)."""
        patches = patchify(images, self.encoder.patch_size)
        masked = torch.gather(patches, 1, ids_mask[..., None].expand(-1, -1, patches.shape[-1]))
        return normalize_targets(masked, self.target_norm)

    def encode_decode(self, images: torch.Tensor, mask: torch.Tensor, num_mask: int | None = None):
        """`num_mask`: the masks' count when known (training); None reads it from `mask` (any ratio)."""
        ids_keep, ids_mask = split_ids(mask, num_mask)
        z = self.encoder.forward_visible(images, ids_keep)
        pred, h = self.decoder(z, ids_keep, ids_mask)
        return z, h, pred, ids_keep, ids_mask

    def reconstruction(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder tokens z, decoder features h of the visible tokens, MSE on the masked patches)."""
        images, mask = batch["image"], batch["mask"]
        z, h, pred, _, ids_mask = self.encode_decode(images, mask, self.num_mask)
        with torch.no_grad():
            target = self.targets(images, ids_mask)
        return z, h, F.mse_loss(pred.float(), target.float())

    def forward(self, batch: dict) -> dict:
        _, _, loss_rec = self.reconstruction(batch)
        return {"loss": loss_rec, "loss_rec": loss_rec.detach()}
