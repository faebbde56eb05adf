"""Entropy coding: push/pop codecs on constriction (ans), the diffusion bits-back chain
(chain), the .vdmc file format (container), classical fallbacks and the Codec API."""
from .codec import Codec, load_codec

__all__ = ["Codec", "load_codec"]
