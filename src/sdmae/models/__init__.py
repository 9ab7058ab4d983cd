"""Networks: the timm ViT encoder that runs on visible tokens, the light decoder, projection heads."""
from sdmae.models.decoder import MaskedDecoder
from sdmae.models.heads import DINOHead
from sdmae.models.vit import ARCHS, MaskedViT, build_encoder, timm_arch_name

__all__ = ["ARCHS", "DINOHead", "MaskedDecoder", "MaskedViT", "build_encoder", "timm_arch_name"]
