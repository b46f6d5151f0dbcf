"""LoRA files: the kohya and diffusers layouts, safe reading, and metadata."""
