"""Training: tasks (losses), the DMP-wrapped model and its optimizers, the loop, evaluation, tracking."""
