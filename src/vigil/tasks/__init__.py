"""One folder per task, the same files in each."""
