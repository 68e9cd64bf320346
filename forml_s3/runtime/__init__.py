"""What runs behind ForML's calls: background uploads, packs, leases, the commit protocol, the local cache and fetching
through it, staging installs, aliases and retention.

Built on :mod:`forml_s3.model` (keys, markers) and :mod:`forml_s3.storage` (bytes); knows nothing of click or of
the operator tools in :mod:`forml_s3.ops`.
"""
