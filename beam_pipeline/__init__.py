"""The Safety Pretraining data pipeline: options, graph and entry point."""
