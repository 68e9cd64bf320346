"""forml-s3: ForML registry and inventory providers over object storage (S3 first, any fsspec URL).

Package map:
    names     - validation of the names a user types before they become keys
    layout    - the one place that knows the key layout of a registry
    codec     - JSON encoding of markers and ForML generation tags
    storage   - where bytes move: one store interface with capability flags, one class per backend
    cache     - local content-addressed cache of immutable objects
    registry  - ``forml.io.asset.Registry`` implementation (thin over layout + store)
    cli       - the ``forml-s3`` operator command line
"""

__version__ = '0.1.0'
