"""The run store: stage folders with manifests, atomic writes and locks (stage.py), and validated Parquet tables
with quarantine (tables.py)."""
