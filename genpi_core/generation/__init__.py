"""Generation engines behind one protocol (base.py): transformers, vLLM and OpenAI-compatible servers, picked by
factory.py; chat_template.py encodes conversations for all of them, models.py loads and converts weights."""
