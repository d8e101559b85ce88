"""MetaLLMiX subpackage."""
