"""Built-in loggers: the JSON-lines epoch log, TensorBoard, Weights & Biases, MLflow.

Each tool is imported when its logger starts, never before: a missing one costs a
warning in the runs that asked for it, nothing elsewhere.
"""
