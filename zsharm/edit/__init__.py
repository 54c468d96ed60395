"""Stage 2, edit: Stable Diffusion moves the foreground from the source description to the target one.

In the paper's order: inversion.py (DDIM inversion), refinement.py (text-embedding refinement, L_Emb),
nulltext.py (null-text optimisation with the edge loss), prompt_to_prompt.py (editing with attention
replacement), blending.py; iteration.py runs one iteration end to end. Shared: attention.py (diffusers
attention processors), diffusion.py (counted model calls), edges.py and pidinet.py, tokens.py, transfer.py.
Nothing here imports stage 1 or stage 3.
"""
