"""Benchmarks: nbtrack against its baselines (plain execution, hand-written MLflow), same run."""
