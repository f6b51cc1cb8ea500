"""stylefleet: image AI models served to HTTP clients at scale on Ray Serve."""
