"""What a tracked cell yields: names and values (AST), figures, models, data, lineage, secrets."""
