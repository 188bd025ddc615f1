"""The prompt as the model sees it: with/without-prompt views (views.py), the spec's checks (checks.py), and the
prompt-generation target format (pg_format.py)."""
