"""Training rows from files (paths only, no database), import parsing, batching and packing."""
