"""Everything that knows about a model: the safety classifier and the generators."""
