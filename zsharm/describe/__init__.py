"""Stage 1, describe: a vision-language model names the object and the imaging conditions of foreground
and background in the closed dictionary (zsharm.vocabulary); or your own words, or a caption file; or, in the toy
world, measured statistics (toy.py).
"""
