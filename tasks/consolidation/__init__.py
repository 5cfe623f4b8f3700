"""Consolidation: a cluster of episodic events becomes validated semantic patterns.

`stages.py` holds the tasks (the entry task and the stages it hands the job
through, each on its own queue); `prompt.py` what the model is asked,
`schema.py` the answer's shape, and `answer.py` the ask-check-repair loop.
"""
