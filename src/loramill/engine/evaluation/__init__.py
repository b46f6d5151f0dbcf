"""Evaluation: how well a LoRA fits its images, measured the same way every time."""
