"""Every file and folder name the pipeline writes, in one place.

A run folder is ``runs/<prompt name>/<version12>/<stage>/``; the names below are what each stage writes
inside its folder. Code that reads a run imports these constants instead of spelling names out, so a
rename is one edit here.
"""

from __future__ import annotations

# --- the run store (every stage) ---------------------------------------------------------------------
MANIFEST = "_manifest.json"  # written last: a stage is complete iff this exists and its key matches
CHECKPOINT_DIR = "_state"  # resumable state of a stage that is still running

# --- ingest ------------------------------------------------------------------------------------------
PROMPT_FILE = "prompt.json"
LINEAGE_FILE = (
    "lineage.json"  # in ingest/: the parent version of the prompt and the diff from it (genpi_core/lineage.py)
)

# --- inputs, conversations, reasons (synthesis) ------------------------------------------------------
INPUTS_FILE = "inputs.parquet"
MESSAGES_FILE = "messages.parquet"
TARGETS_FILE = "targets.parquet"
EPISODES_FILE = "episodes.parquet"
REASONS_FILE = "reasons.parquet"
QUARANTINE_FILE = "quarantine.parquet"  # every stage that can reject rows writes one, empty or not
CONVERSATIONS_PROGRESS = "progress.json"  # in conversations/_state/: the last finished turn, for resume

# --- dataset -----------------------------------------------------------------------------------------
TRAIN_FILE = "train.parquet"
VAL_FILE = "val.parquet"
TEST_FILE = "test.parquet"

# --- train -------------------------------------------------------------------------------------------
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
REPLAY_DIR = "replay"  # greedy base-model replies evaluations share (genpi_core/generation/replay.py)
METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss.png"
TRAIN_LOG_FILE = "train_log.parquet"
SNAPSHOTS_DIR = "snapshots"  # in _state/ (train.snapshots > 0): step-<step>/ adapters, to evaluate along training
SNAPSHOT_INFO = "snapshot.json"  # in a snapshot folder: its step and the training seconds until it
TRAIN_JOB_FILE = "train_job.json"  # in _state/: what the training child process was asked to do
TRAIN_PROCESS_LOG = "train.log"  # in _state/: the child's output, tailed into the error when it fails
CHECKPOINT_PREFIX = "checkpoint"  # in _state/: checkpoint-<step>/ folders, the newest named by LATEST_CHECKPOINT
LATEST_CHECKPOINT = "latest_checkpoint"
CHECKPOINT_TENSORS = "state.pt"  # in a checkpoint folder: adapter, optimizer, RNG, best adapter
CHECKPOINT_TRAINER_STATE = "trainer_state.json"  # in a checkpoint folder: step, log, early-stopping state

# --- evaluate ----------------------------------------------------------------------------------------
EVAL_RESULTS_FILE = "eval_results.parquet"
SUMMARY_FILE = "summary.json"  # schemas.summary.EvaluationSummary
REPORT_FILE = "report.md"
PLOT_FILE = "compliance.png"
CHECKS_PLOT_FILE = "checks.png"
VARIANTS_FILE = "variants.parquet"
PER_CHECK_FILE = "per_check.parquet"
WORST_EXAMPLES_FILE = "worst_examples.parquet"
LEAKAGE_FILE = "leakage.parquet"
MULTI_TURN_FILE = "multi_turn.parquet"
JUDGE_FILE = "judge.parquet"

# --- compare (several adapters of one run, side by side) ---------------------------------------------
COMPARISON_DIR = "comparison"
COMPARISON_FILE = "comparison.parquet"
COMPARISON_REPORT = "comparison.md"
COMPARISON_PLOT = "comparison.png"

# --- promote -----------------------------------------------------------------------------------------
DECISION_FILE = "decision.json"  # in the version's promote/ folder
PROMOTED_FILE = "promoted.json"  # in runs/<prompt name>/: the promoted version of that prompt

# --- watch -------------------------------------------------------------------------------------------
WATCH_STATE_FILE = ".genpi-watch.json"

# --- what each stage hands on (StageOutput.files keys -> names in its folder) ------------------------
INPUTS_OUTPUTS = {"inputs": INPUTS_FILE, "quarantine": QUARANTINE_FILE}
CONVERSATIONS_OUTPUTS = {
    "messages": MESSAGES_FILE,
    "targets": TARGETS_FILE,
    "episodes": EPISODES_FILE,
    "quarantine": QUARANTINE_FILE,
}
REASONS_OUTPUTS = {"reasons": REASONS_FILE, "quarantine": QUARANTINE_FILE}
DATASET_OUTPUTS = {"train": TRAIN_FILE, "val": VAL_FILE, "test": TEST_FILE, "quarantine": QUARANTINE_FILE}
TRAIN_OUTPUTS = {"adapter": ADAPTER_DIR, "log": TRAIN_LOG_FILE, "plot": LOSS_PLOT, "metrics": METRICS_FILE}
EVALUATE_OUTPUTS = {
    "results": EVAL_RESULTS_FILE,
    "summary": SUMMARY_FILE,
    "report": REPORT_FILE,
    "plot": PLOT_FILE,
    "checks_plot": CHECKS_PLOT_FILE,
    "variants": VARIANTS_FILE,
    "per_check": PER_CHECK_FILE,
    "worst_examples": WORST_EXAMPLES_FILE,
    "leakage": LEAKAGE_FILE,
    "multi_turn": MULTI_TURN_FILE,
    "judge": JUDGE_FILE,
}
PROMOTE_OUTPUTS = {"decision": DECISION_FILE}
TASK_EPISODES_FILE = "tasks.parquet"
TASK_SUMMARY_FILE = "task_summary.json"
TASKS_OUTPUTS = {"episodes": TASK_EPISODES_FILE, "summary": TASK_SUMMARY_FILE, "report": REPORT_FILE}
