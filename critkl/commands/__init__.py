"""The commands of `critkl` (`critkl.cli` parses and dispatches): `pretraining` (render,
pretrain, eval, export, snapshot), `finetuning` (finetune, sweep, plot), `analysis` (analyze,
critical); `flags` turns typed configs into described flags."""
