"""Graph state and wiring (LangGraph). Installed as ``metallmix.graphs``."""
