"""The demo and its fixtures: run.py (``tether demo``: the stages), task.py (the built-in task and its hidden gold
preference), simulate.py (simulated annotators, through the same store functions as people), tiny.py (tiny models
and tokenizers, built offline), report.py (the demo's HTML report). Nothing outside the demo, the CLI's demo
commands and the tests imports them."""
