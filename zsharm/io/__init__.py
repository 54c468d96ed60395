"""Pictures and files, one module per job: pictures.py (the one reader, `Picture`), masks.py (reading and
binarising masks), saving.py (output formats, the checks before work, the encoders), files.py (the atomic
writer), folders.py (finding composites and their masks).
"""
