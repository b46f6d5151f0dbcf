"""adapters/store."""
