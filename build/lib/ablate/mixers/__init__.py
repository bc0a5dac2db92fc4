"""Token mixers, one file each, all behind the protocol in ``mixers.base``; the paths they are
assembled from live in ``mixers.paths``. Importing this package registers every mixer module in it."""

from ablate.registry import import_submodules

import_submodules(__name__, __path__)
