"""Window aggregates: counter families, latency sketches, label caps, window statistics, chunk summaries."""
