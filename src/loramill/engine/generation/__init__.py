"""Generation: a resident base model, LoRAs composed with weights, PNGs that carry their parameters."""
