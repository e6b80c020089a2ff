"""recfunnel: train and serve deep-learning recommenders as a whole funnel."""

import logging

# TorchRec calls torch.fx.is_fx_tracing() on every KeyedJaggedTensor, and torch logs a one-time
# notice about that API to stderr: noise for our users, nothing they can act on.
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)

__version__ = "0.1.0"
