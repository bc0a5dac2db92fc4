"""Sweeps: a grid of runs (variants x tasks x seeds x knob values) executed through an Optuna
study, so any number of workers on any number of machines can share it."""
