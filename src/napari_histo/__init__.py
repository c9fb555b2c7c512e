"""napari-histo: stain normalization and nuclei segmentation for H&E pathology in napari.

Importing the package is cheap: it pulls in neither Qt nor torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
