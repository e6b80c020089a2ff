"""Raw tables in -> a dataset folder out: check every column (``columns``, ``check``), derive
labels (``labels``), split rows (``splits``), build vocabularies and encode features (``encode``),
write shards, pairs and catalogues (``write``); ``dataset`` runs the steps in order and ``spark``
does the same with Spark workers. ``tables`` holds the types passed between the steps.
"""
