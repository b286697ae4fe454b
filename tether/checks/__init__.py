"""Checks on text: PII (pii), rules (rules), refusals (refusal), redaction (redact), storable input (inputs)."""
