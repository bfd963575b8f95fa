"""The process around the decision: gRPC server, workers, health, background tasks,
metrics and logs."""
