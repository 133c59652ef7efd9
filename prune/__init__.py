"""edgekit.prune: structured pruning through a dependency graph (graph, handlers, importance, structured,
masksparsity) and N:M semi-structured sparsity (nm); recipe stages ``prune`` and ``sparsify`` in stages.py.

    from edgekit.prune.structured import prune
    new_model, report = prune(model, example_inputs, ratio=0.3, importance="l1", round_to=8, ignore=["head*"])
"""

if __name__ != "edgekit.prune":  # the folder is mapped into edgekit by setup.py; a second copy would not see its registrations
    raise ImportError(f"the prune/ folder is the package edgekit.prune: import edgekit.prune instead of {__name__}")

