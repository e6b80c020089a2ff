"""The recommendation funnel: retrieve from the item index -> filter -> rank -> re-rank.

``pipeline`` (the stages and their config), ``inputs`` (user and candidate inputs of the models),
``rerank`` (MMR), ``batch`` / ``batch_spark`` (`recommend` for every user), ``evaluate`` (what each
stage adds on a held-out split), ``show`` (recommendations for people to read).
"""
