"""Evaluation metrics: pointwise ranking metrics (``ranking``) and full-catalogue top-K retrieval (``retrieval``)."""

from recfunnel.metrics.ranking import (
    accuracy,
    auc,
    binary_metrics,
    calibration,
    calibration_bins,
    log_loss,
    mae,
    regression_metrics,
    rmse,
)

__all__ = [
    "accuracy",
    "auc",
    "binary_metrics",
    "calibration",
    "calibration_bins",
    "log_loss",
    "mae",
    "regression_metrics",
    "rmse",
]
