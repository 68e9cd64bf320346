"""Operator tools behind ``forml-s3``'s commands: the registry snapshot with verify (``ls``, ``verify``), garbage
collection (``gc``), lifecycle rules (``retention rules``) and copying registries (``copy``).

Plain functions returning data; the click commands in :mod:`forml_s3.cli` print it. No click here.
"""
