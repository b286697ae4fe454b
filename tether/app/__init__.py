"""The feedback collection web app: FastAPI routes, Jinja2 templates and HTMX (``tether serve``)."""
