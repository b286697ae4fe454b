"""Self-contained HTML reports: the shared pieces (html.py), the policy evaluation report (policy.py), the QC report (qc.py)."""
