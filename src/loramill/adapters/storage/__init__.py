"""adapters/storage."""
