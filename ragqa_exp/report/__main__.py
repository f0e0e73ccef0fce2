"""`python -m ragqa_exp.report` (see ragqa_exp/report/cli.py)."""
from ragqa_exp.report.cli import main

main()
