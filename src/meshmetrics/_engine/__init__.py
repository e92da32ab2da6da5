"""The aggregation engine: series, their per-thread values, the merge into every reader's export."""
