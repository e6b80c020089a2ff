"""Readers of raw data: files or tables in -> ``prepare``'s tables (or rows to shards) out.

Each source module has ``HELP``, ``add_arguments(parser)``, ``run(args) -> Manifest`` (the CLI
adapter) and a plain ``prepare_*`` function with the same options as keyword arguments.
``fetch`` downloads MovieLens 100k into the local cache.
"""
