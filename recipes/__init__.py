if __name__ != "edgekit.recipes":  # the folder is mapped into edgekit by setup.py; a second copy would not see its registrations
    raise ImportError(f"the recipes/ folder is the package edgekit.recipes: import edgekit.recipes instead of {__name__}")
