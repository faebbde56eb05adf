"""vdmcodec: lossless image compression with a Variational Diffusion Model.

    import vdmcodec
    codec = vdmcodec.load_codec("mnist")
    blob = codec.compress(images)          # list of uint8 (H, W) / (H, W, 3) arrays or PIL images
    images = codec.decompress(blob)
    codec.estimate_bpd(images, steps=64)   # the model's negative ELBO in bits per dimension
"""
from .coding.codec import Codec, load_codec
from .errors import DataError, FormatError, ModelError, VdmcodecError
from .zoo import load_model

__version__ = "0.1.0"
__all__ = ["Codec", "load_codec", "load_model", "VdmcodecError", "DataError", "FormatError", "ModelError", "__version__"]
