"""Defaults of the lifecycle policy (:class:`forml_s3.ops.lifecycle.Policy`), written once, in a module light enough
to import for ``forml-s3 lifecycle --help``: the CLI's options show them without importing ForML."""

EXPIRE_UNCOMMITTED_AFTER = 7
"""Days after which uncommitted uploads (tag ``forml-s3=uncommitted``) expire: must exceed the longest training."""
ABORT_MULTIPART_AFTER = 7
"""Days after which incomplete multipart uploads are aborted."""
EXPIRE_RETIRED_AFTER = 30
"""Days after which retired generations (tag ``forml-s3=retired``) expire."""
STORAGE_CLASS = 'STANDARD_IA'
"""Where ``transition_releases_after`` moves the registry's objects."""
