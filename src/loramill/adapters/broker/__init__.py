"""adapters/broker."""
