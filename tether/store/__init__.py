"""The feedback and asset store: tables, engine and sessions, import/export formats."""
