"""Generator backends (Beam ModelHandlers over chat prompts) and the prompts they are given."""
