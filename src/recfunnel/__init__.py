"""recfunnel: train and serve deep-learning recommenders as a whole funnel."""

__version__ = "0.1.0"
