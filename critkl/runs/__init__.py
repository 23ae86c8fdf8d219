"""The run shell: a run directory with config, checkpoints, resume and progress; the
pre-training and fine-tuning loops that drive the core's pure functions; models by name
(shipped or a run directory); results: statistics, tables and plots."""
