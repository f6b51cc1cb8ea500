"""The Ray Serve glue around the models: queueing, metrics, error mapping."""
