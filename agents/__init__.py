"""LLM nodes of the recommendation graph. Installed as ``metallmix.agents``."""
