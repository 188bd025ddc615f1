"""The teacher_logprobs stage's table: the prompted teacher's top-k next-token log-probs on each SFT target token.

One row per (example, target token, rank), so every column is a plain type pandera can check. Written once
per (model, train table, k) by ``genpi_core.train.teacher_logprobs``; the distillation term
(``train.distill_weight``) reads it instead of recomputing the teacher in every training run.
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.datasets import GenpiSchema

TEACHER_LOGPROBS_FILE = "teacher_logprobs.parquet"
TEACHER_LOGPROBS_OUTPUTS = {"logprobs": TEACHER_LOGPROBS_FILE}


class TeacherLogprobsSchema(GenpiSchema):
    """Top-k of the teacher (base model, prompt in context) at each target token of each SFT example."""

    example_id: Series[str] = pa.Field(description="The SFT example (train.parquet) the token belongs to.")
    position: Series[int] = pa.Field(ge=0, description="Index of the target token within the example's target.")
    rank: Series[int] = pa.Field(ge=0, description="0 = the teacher's most likely token.")
    token_id: Series[int] = pa.Field(ge=0)
    logprob: Series[float] = pa.Field(le=1e-6, description="Log-prob renormalised over the top-k (they sum to 1).")

    @pa.dataframe_check
    def one_row_per_rank(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["example_id", "position", "rank"]).any()
