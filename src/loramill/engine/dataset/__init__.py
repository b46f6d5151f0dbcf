"""engine/dataset."""
