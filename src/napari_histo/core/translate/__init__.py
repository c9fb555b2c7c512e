"""IHC -> H&E translation (CycleGAN): networks, model files, training, tiled inference, quality.

The public calls are re-exported here: ``load_translator``, ``translate`` / ``translate_iter``,
``train_translator`` / ``train_translator_iter``; ``quality`` scores a translation.
"""

from .infer import translate, translate_iter
from .model import DEFAULT_MODEL, DIRECTIONS, FORMAT, Translator, load_translator
from .nets import build_discriminator, build_generator
from .train import train_translator, train_translator_iter

__all__ = [
    "DEFAULT_MODEL",
    "DIRECTIONS",
    "FORMAT",
    "Translator",
    "build_discriminator",
    "build_generator",
    "load_translator",
    "train_translator",
    "train_translator_iter",
    "translate",
    "translate_iter",
]
