"""loramill: train LoRA adapters for diffusion models from a handful of images, and generate with them."""

__version__ = "0.1.0"
