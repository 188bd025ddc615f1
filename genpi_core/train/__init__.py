"""Training the adapter: the recipe (recipe.py, the run_finetune entry), the loop (trainer.py), examples as tokens
(data.py), the target-only loss (loss.py), the teacher's log-probs (teacher_logprobs.py), QLoRA (qlora.py) and the
child-process launcher (job.py)."""
