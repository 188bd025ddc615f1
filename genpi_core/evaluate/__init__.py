"""Evaluation on held-out inputs: the stage (run.py), its numbers (summary.py), its report (report.py), and one
module per measure (agreement, bootstrap, leakage, judge, multiturn) plus side-by-side comparison (compare.py)."""
