"""Classification: cross-entropy, accuracy per epoch; macro-F1 and a confusion matrix on test."""

from reprolab.learn.tasks.supervised import SupervisedTask

TASK = SupervisedTask("classification")
