"""Probes of trained models: the commands that run a model and write records for analysis.

    ablate maps RUN_DIR --out DIR         attention and SSM implicit maps of one real input (maps.py)
    ablate importance RUN_DIR             the headline metric with each path / head zeroed (importance.py)

They write arrays, JSON and CSV files; ``ablate.analysis`` reads those and never imports model code.
"""
