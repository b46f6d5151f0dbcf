"""gateway/bot."""
