"""Evaluations of trained runs, one file each, behind the protocol in ``evaluate.base``. Importing
this package registers every evaluation module in it."""

from ablate.registry import import_submodules

import_submodules(__name__, __path__)
