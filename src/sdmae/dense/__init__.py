"""Dense downstream tasks on the pre-trained ViT: nuclei segmentation (`sdmae eval segment`) and detection
(`sdmae eval detect`). See docs/dense.md."""
