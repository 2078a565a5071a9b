"""snailcompress: PixelSNAIL as a lossless image compressor and a density-estimation benchmark."""

__version__ = "0.2.0"
