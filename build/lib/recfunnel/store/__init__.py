"""The model store: one folder per trained model, everything needed to use it without the dataset.

    RUN_DIR/model/
        model.pt              unsharded weights (plain tensors) + model kind
        config.yaml           the resolved run configuration
        manifest.json         the dataset's schema (features, cardinalities, labels)
        vocab/                raw value -> index, for encoding requests
        users.parquet         (two-tower) every user and its features
        items.parquet         (two-tower) every item and its features
        interactions.parquet  (interaction data) every interaction the model learned from: what
                              each user has seen, and item popularity

``model``: save, load and build models; ``interactions``: the facts serving needs about who did
what. Training writes the folder once; ``index``, ``evaluate``, ``recommend`` and ``serve`` read it.
"""
