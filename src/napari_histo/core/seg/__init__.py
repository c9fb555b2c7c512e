"""Nuclei segmentation: architectures, training targets, losses, post-processing, inference."""
