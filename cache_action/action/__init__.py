"""The GitHub Action: the main stage (restore, start the registry) and the post stage
(stop, prune, save, report)."""
