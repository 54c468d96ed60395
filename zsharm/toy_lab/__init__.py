"""The toy prior's lab tools: training its models (train.py, `zsharm toy train`) and measuring what they learned
(measure.py, benchmarks/toy_prior.py). The toy world itself (zsharm.toy: the scenes and the shipped prior) is what
`--model toy` runs on; these tools sit above the stages, whose parts they train and measure.
"""
