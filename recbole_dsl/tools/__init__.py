"""The command-line tools around training: dataset preparation, the popularity analysis of
a checkpoint, and hyperparameter sweeps."""
