"""edgekit.prune: structured pruning through a dependency graph and N:M semi-structured sparsity (nm).

Structured pruning, by responsibility: capture (torch.fx fast path, torch.export otherwise), slots (the typed
vocabulary), labels (label propagation), fx_rules / aten_rules (per-node rules; ATen rules in a registry keyed
by op), handlers (per-layer-type handlers for the fx path), depgraph (dependency groups), importance
(criteria registry), structured (the plan), apply (physical removal), masksparsity. Recipe stages ``prune`` and
``sparsify`` in stages.py.

    from edgekit.prune.structured import prune
    new_model, report = prune(model, example_inputs, ratio=0.3, importance="l1", round_to=8, ignore=["head*"])
"""

if __name__ != "edgekit.prune":  # the folder is mapped into edgekit by setup.py; a second copy would not see its registrations
    raise ImportError(f"the prune/ folder is the package edgekit.prune: import edgekit.prune instead of {__name__}")

