"""What a run tells the world while it runs: the `progress` file (the trainer -> operator contract, one
writer), the `report` directory (metrics.jsonl, loss curves, summary), and `tracking` sinks (TensorBoard,
MLflow, Weights & Biases, a log line every few steps).
"""
