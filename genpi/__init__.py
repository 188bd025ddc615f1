"""genpi: Generative Prompt Internalization. Bake a long, fixed prompt into a LoRA adapter.

The Python API (the CLI is ``genpi``, from ``genpi.cli``):

    import genpi
    run = genpi.internalize("examples/prompts/library_desk.yaml", config="configs/default.yaml")
    summary = genpi.evaluate(run.run_dir)
    student = genpi.load_student(run.run_dir)
    print(student.generate("Can I renew a book twice?"))

Importing ``genpi`` is cheap: torch, transformers and Prefect load on the first call that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genpi.api import InternalizeResult, Student, evaluate, internalize, load_student

__all__ = ["InternalizeResult", "Student", "evaluate", "internalize", "load_student"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from genpi import api

        return getattr(api, name)
    raise AttributeError(f"module 'genpi' has no attribute {name!r}")
