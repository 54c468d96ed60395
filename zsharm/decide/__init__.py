"""Stage 3, decide: the evaluator scores how harmonious a result looks (evaluator.py), and the rule chooses
Continue, Regenerate or Conclude (rule.py); training.py trains an evaluator of your own.
"""
