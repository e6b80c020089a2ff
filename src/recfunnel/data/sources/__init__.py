"""Readers of raw data. Each module has ``HELP``, ``add_arguments(parser)``, ``run(args) -> Manifest``
(the CLI adapter) and a plain ``prepare_*`` function with the same options as keyword arguments."""
