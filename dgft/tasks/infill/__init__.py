"""Code infilling: HumanEval-Infilling problems, executed in `dgft.sandbox` (`humaneval.py`)."""
