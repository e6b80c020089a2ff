"""Classical baselines: most-popular and EASE for retrieval, logistic regression for ranking.

Retrieval baselines share one interface with the trained towers: ``fit(...)`` on training pairs,
then ``score_users(user_idx int64 (b,)) -> torch float (b, n_items + 1)`` for
:func:`recfunnel.metrics.retrieval.evaluate_topk`.
"""

from recfunnel.baselines.ease import EASE
from recfunnel.baselines.logistic import logistic_regression
from recfunnel.baselines.popular import MostPopular

__all__ = ["EASE", "MostPopular", "logistic_regression"]
