"""The .vdmc container (format versions 7 to 10; versions 3 to 6 are still read): header.py
holds the header's bytes both ways and the format's limits, validation.py the consistency of
a parsed header, file.py the file around it (magic, version, lengths, image records,
payload, CRC-32). The names other modules use are imported here; docs/format.md has the
layout."""
from .file import frame, pack, unpack
from .header import (CHUNK_GRID_VERSION, CONTEXT_VERSION, CORR_SCALE_STEPS, DEFAULT_NAMES, DTYPES, ENVELOPE_VERSION,
                     HASH_BYTES, MAGIC, MAX_CHUNK_GRID_DROP, MAX_CHUNK_IMAGES, MAX_GRID_BITS, MAX_HEADER_BYTES, MAX_IMAGES,
                     MAX_NAME_BYTES, MAX_SHORT_STR,
                     MAX_SIDE, MAX_STEPS, MAX_THREADS, MAX_TILE, MAX_TOTAL_SUBPIXELS, METHODS, MIN_CHUNK_GRID_BITS,
                     MIN_GRID_BITS, MODEL_METHODS, READABLE_VERSIONS, TILED_METHODS, VERSION, Field, Header, Reader,
                     encode_header, encode_str, encode_varint, name_sequence, parse_header, run_length)
from .validation import coded_shape, validate

__all__ = ["CHUNK_GRID_VERSION", "CONTEXT_VERSION", "CORR_SCALE_STEPS", "DEFAULT_NAMES", "DTYPES", "ENVELOPE_VERSION",
           "HASH_BYTES", "MAGIC", "MAX_CHUNK_GRID_DROP", "MAX_CHUNK_IMAGES", "MAX_GRID_BITS", "MAX_HEADER_BYTES", "MAX_IMAGES",
           "MAX_NAME_BYTES",
           "MAX_SHORT_STR", "MAX_SIDE", "MAX_STEPS", "MAX_THREADS", "MAX_TILE", "MAX_TOTAL_SUBPIXELS", "METHODS",
           "MIN_CHUNK_GRID_BITS", "MIN_GRID_BITS", "MODEL_METHODS", "READABLE_VERSIONS", "TILED_METHODS", "VERSION",
           "Field", "Header", "Reader", "coded_shape", "encode_header", "encode_str", "encode_varint", "frame",
           "name_sequence", "pack", "parse_header", "run_length", "unpack", "validate"]
