"""The only modules that reach into other libraries' private APIs, one per library.

Each lists what it uses in ``PRIVATE_API`` and has ``missing()``; ``tests/compat`` fails loudly,
naming the attribute, when an upgrade removes one.
"""
