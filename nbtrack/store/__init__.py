"""The only code that imports MLflow: writing runs, reading them back, the registry, the run index."""
