"""ablate: controlled architecture-ablation studies of attention / Mamba hybrid language models.

The Python API (``ablate.api``), loaded on first use so that importing a part of ablate (the
analysis, a config) does not import the model:

    ablate.load_run(dir) -> Run      ablate.export_run(run_dir, out)
    ablate.build_model(variant, sets) -> LM      ablate.load_results(results_dir) -> DataFrame
"""

__version__ = "0.1.0"

_API = ("load_run", "export_run", "build_model", "load_results", "Run")


def __getattr__(name: str):
    if name in _API:
        from ablate import api

        return getattr(api, name)
    raise AttributeError(f"module 'ablate' has no attribute '{name}'")


__all__ = [*_API, "__version__"]
