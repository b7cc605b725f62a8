"""What a run reports while it runs: the progress file, report/ and tracking sinks.

The `progress` file (the trainer -> operator contract, one
writer), the `report` directory (metrics.jsonl, loss curves, summary), and `tracking` sinks (TensorBoard,
MLflow, Weights & Biases, a log line every few steps).
"""
