"""Synthesis from the prompt alone: pseudo inputs (inputs.py), role-swapped conversations with teacher and base
outputs (conversations.py), and reasons why the prompt changes each reply (reasons.py)."""
