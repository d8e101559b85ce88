"""The local LLM runtime the agents speak through: llama.cpp loading (``llm``), the bundled
GGUF weights and their checks (``weights``, ``registry``), a LangChain chat-model adapter and
the scripted fake used by unit tests. The recommender and judge sit one level up."""
