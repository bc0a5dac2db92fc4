"""lm-evaluation-harness task configs that run on local data files, fully offline.

This directory is an lm-eval ``include_path``: one ``ablate_<task>.yaml`` per task, each a copy of
lm-eval's own prompt and metric fields for that task, with the data coming from ``local.py``
(``custom_dataset`` loaders reading ``<data dir>/...``; see README.md here for the table of tasks,
item counts and every difference from lm-eval's and Based's releases).

This module only names things (it is imported by the CLI, so it must not import lm_eval):

- ``INCLUDE_PATH``: this directory, for ``TaskManager(include_path=...)`` / ``--include_path``;
- ``TASKS``: short name -> lm-eval task name (``"piqa" -> "ablate_piqa"``);
- ``GROUPS``: named sets of short names (``commonsense``, ``recall``, ``lm``, ``all``);
- ``HEADLINE``: short name -> the key of its headline value in lm-eval's results, in lm-eval's
  ``"<metric>,<filter>"`` form (``results["results"]["ablate_piqa"]["acc_norm"]``);
- ``AVERAGED``: which short names enter the "commonsense avg" and "recall avg";
- ``data_dir`` / ``data_file`` / ``cache_dir``: where the data is read and the converted files go.
"""

from __future__ import annotations

import os
from pathlib import Path

from ablate.config import ConfigError

INCLUDE_PATH: Path = Path(__file__).resolve().parent

TASKS: dict[str, str] = {
    name: f"ablate_{name}"
    for name in (
        "lambada_openai",
        "piqa",
        "arc_challenge",
        "arc_easy",
        "hellaswag",
        "winogrande",
        "social_iqa",
        "boolq",
        "openbookqa",
        "squad_completion",
        "swde",
        "wikitext",
    )
}

_COMMONSENSE = (
    "lambada_openai", "piqa", "arc_challenge", "arc_easy", "hellaswag", "winogrande", "social_iqa", "boolq",
    "openbookqa",
)
_RECALL = ("swde", "squad_completion")

GROUPS: dict[str, tuple[str, ...]] = {
    "commonsense": _COMMONSENSE,
    "recall": _RECALL,
    "lm": ("wikitext",),
    "all": tuple(TASKS),
}

# What lm-eval reports for each task (its configs' metric lists); runs record all of them.
METRICS: dict[str, tuple[str, ...]] = {
    "lambada_openai": ("perplexity", "acc"), "piqa": ("acc", "acc_norm"), "arc_challenge": ("acc", "acc_norm"),
    "arc_easy": ("acc", "acc_norm"), "hellaswag": ("acc", "acc_norm"), "winogrande": ("acc",),
    "social_iqa": ("acc",), "boolq": ("acc",), "openbookqa": ("acc", "acc_norm"), "squad_completion": ("contains",),
    "swde": ("contains",), "wikitext": ("word_perplexity", "byte_perplexity", "bits_per_byte"),
}

# acc_norm where lm-eval reports it for the task, else acc; contains for recall; word_perplexity for wikitext.
# lm-eval's results dict holds each under "<metric>,none" (no filter).
HEADLINE: dict[str, str] = {
    "lambada_openai": "acc",
    "piqa": "acc_norm",
    "arc_challenge": "acc_norm",
    "arc_easy": "acc_norm",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "social_iqa": "acc",
    "boolq": "acc",
    "openbookqa": "acc_norm",
    "squad_completion": "contains",
    "swde": "contains",
    "wikitext": "word_perplexity",
}

# The Hymba paper's commonsense average is 8 tasks: LAMBADA, PIQA, ARC-C, ARC-E, HellaSwag, WinoGrande,
# TruthfulQA, SIQA. TruthfulQA has no local copy, so ours is those 7; boolq and openbookqa are reported only.
AVERAGED: dict[str, tuple[str, ...]] = {
    "commonsense": ("lambada_openai", "piqa", "arc_challenge", "arc_easy", "hellaswag", "winogrande", "social_iqa"),
    "recall": _RECALL,
}

DATA_DIR_ENV = "ABLATE_DATA_DIR"
CACHE_DIR_ENV = "ABLATE_CACHE_DIR"


def _checkout() -> Path:
    """The directory holding the ``ablate`` package (the repository root for a source checkout)."""
    import ablate

    return Path(ablate.__file__).resolve().parents[1]


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Where the task data lives: ``explicit`` (lm-eval ``--metadata '{"data_dir": ...}'``), else the
    environment variable ``ABLATE_DATA_DIR``, else ``<checkout>/../shared/data``. Not checked here: a
    missing file is reported by ``data_file``, which can name it."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return _checkout().parent / "shared" / "data"


def data_file(relative: str, explicit: str | os.PathLike | None = None) -> Path:
    """The data file ``relative`` (e.g. ``"piqa/valid.jsonl"``) under ``data_dir(explicit)``, or a
    ConfigError naming the missing file and how to point at another data directory."""
    path = data_dir(explicit) / relative
    if not path.is_file():
        source = (
            "data_dir (ablate eval --data-dir, evaluate.lm_eval.data_dir or lm-eval --metadata)" if explicit
            else f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV)
            else "the default <checkout>/../shared/data"
        )
        raise ConfigError(
            f"{path}: lm-eval task data file not found (data directory from {source}). Point at the "
            f"directory holding {relative!r} with that data_dir or, when none is given, the environment "
            f"variable {DATA_DIR_ENV}=/path/to/data."
        )
    return path


def cache_dir() -> Path:
    """Where converted task files are written: ``$ABLATE_CACHE_DIR/lm_eval``, else ``~/.cache/ablate/lm_eval``."""
    root = os.environ.get(CACHE_DIR_ENV) or "~/.cache/ablate"
    return Path(root).expanduser() / "lm_eval"
