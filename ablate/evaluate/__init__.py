"""Evaluations of trained runs, one file each, behind the protocol in ``evaluate.base``. Importing
this package registers every evaluation module in it, except ``lm_eval_model``: lm-eval's model
adapter needs the optional lm-eval, so it is imported where it is used."""

from ablate.registry import import_submodules

import_submodules(__name__, __path__, skip=("lm_eval_model",))
