"""What the commands share: config checks, run folders and files, checkpoints, resume,
failures, DDP, W&B, callbacks and the command-line entry."""
