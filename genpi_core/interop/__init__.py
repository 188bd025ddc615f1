"""Data in other trainers' formats: TRL's SDFT dataset (trl_sdft.py)."""
