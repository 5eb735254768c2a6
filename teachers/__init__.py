"""Built-in teachers: scripted (offline), gemini, openai (any OpenAI-compatible server), hf (local VLM)."""
