"""What several test files share: the command-line tools run as a user would (cli), a
callback that signals its own run (interrupt), W&B offline records read back (wandb_records),
the documented commands run as written (doc_commands)."""
