"""LoRA files: the kohya, diffusers and sd-scripts layouts, which tools load each, safe reading, metadata."""
