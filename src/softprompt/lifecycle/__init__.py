"""The lifecycle of a served task (docs/keep-learning.md): capture what is served, take feedback on it,
retrain on that feedback without forgetting, run a candidate beside the live version, promote or
roll back, and watch for drift. Between the learners (``continual``) and the server (``serving``).
"""
