"""One router per resource: auth (login), annotate (annotators), review (reviewers), admin, api (JSON)."""
