"""Regression: RMSLE (the RMSE of log1p targets) as loss and score; actual vs predicted on test."""

from reprolab.learn.tasks.supervised import SupervisedTask

TASK = SupervisedTask("regression")
