"""The command line: ``demo`` and ``top``."""
