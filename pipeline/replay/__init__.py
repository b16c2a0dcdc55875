"""Replay and backtest: judge archived telemetry with the stream's own engine and gates.

* `archive`: JSONL, JSONL.gz and Parquet archives -> decoded batches (a polars frame of events
  plus dead letters);
* `summarize`: a frame -> the stream's per-window `Partial`, column-wise;
* `run`: `replay` feeds the batches to the stream's `Engine` in order (`Replayer`) and writes
  the timeline;
* `whatif`: re-judge the kept windows under other thresholds and say what changes;
* `report`: the HTML report of a replay.
"""
