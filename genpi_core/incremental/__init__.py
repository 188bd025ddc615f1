"""Incremental re-internalization: an edited prompt is rebuilt from its parent version's run.

``plan`` decides whether the new version may start from its parent and records why, piece by piece;
``reuse`` holds what each stage takes over from the parent (inputs, base outputs, reasons); ``safety`` decides,
after the full evaluation, whether the warm-started student is kept or a full run replaces it.
"""
