"""LoRA fine-tuning under DP-SGD (or non-private) in one loop: the privacy guarantee and its accountant, a run's
training settings, training across processes, the frozen lower blocks computed once per record, and the loss
read through the frozen head in chunks.

Public API, by module: `privacy` (`DPConfig`, the accountant's ε), `train_config` (`TrainConfig`), `distributed`,
`frozen_prefix`, `head_loss`, `training` (`finetune`)."""
