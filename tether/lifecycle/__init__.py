"""The model lifecycle after training: evaluation, the registry, governance, monitoring, reports."""
