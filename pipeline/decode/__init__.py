"""Bytes -> events: the telemetry schema's acceptance rules and the decoders built on them."""
