"""megalmm: mega-scale multivariate linear mixed models (MegaLMM) from the command line."""

__version__ = "0.1.0"

# Bumped whenever the layout of prepared.h5 or chain files changes incompatibly.
FORMAT_VERSION = 1
