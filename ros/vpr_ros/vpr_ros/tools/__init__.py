"""Developer tools (config generation)."""
