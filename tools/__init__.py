"""Deterministic capabilities: datasets, meta-features, knowledge base, meta-learner, retrieval,
training. Installed as ``metallmix.tools``."""
