"""What can be asked: one module per queue, every task under the one policy in `base.py`.

Consolidation, whose stages are tasks themselves, is a package holding its
stages beside its prompt, answer schema and repair logic.
"""
