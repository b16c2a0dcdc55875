"""Window aggregates: latency sketches, label caps, per-window statistics and chunk summaries."""
