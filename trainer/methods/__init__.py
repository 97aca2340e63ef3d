"""Registered methods (the registry itself is dsrhn/registry.py): each module declares networks,
optimizers, phases and step functions, losses, options and its query/gallery code paths."""
