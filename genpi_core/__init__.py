"""genpi's compute core: no Prefect here, so a notebook, a script or `accelerate launch` can use it directly.

``pipeline.py`` is the table of contents: one ``*_stage`` per stage, in order.
"""
