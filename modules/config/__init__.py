"""Typed configs: the sections, loading, cross-field checks, the schema and the safe YAML reader; the family
registry (what a config names) and the formats of checkpoints and model files, which carry their config."""
