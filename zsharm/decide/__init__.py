"""Stage 3, decide: the evaluator scores how harmonious a result looks (evaluator.py), and the rule chooses
Continue, Regenerate or Conclude (rule.py); scoring.py says what the evaluator is shown (the blend in memory, or
the paper's JPEG round trip) and with which mask; loop.py runs stages 2 and 3 together (`DecisionLoop`: the
evaluator, the rule and the scoring policy passed in) and history.py keeps the run's history (images,
history.json with the configuration, the contact sheet); training.py trains an evaluator of your own.
"""
