"""engine/lora."""
