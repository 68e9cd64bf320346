"""forml-s3: ForML registry and inventory providers over object storage (S3 first, any fsspec URL).

Package map (each layer imports only from the layers listed before it):
    model     - names a user types, the key layout (makes and parses keys), marker JSON (codec);
    settings  - beside it: the providers' settings, checked once up front (one line per typo)
    storage   - where bytes move: one store interface with capability flags, one class per backend, options
    runtime   - what runs behind ForML's calls: uploads, packs, leases, the commit protocol, the marker
                reader, the cache and fetching through it, staging, aliases, retention
    registry, inventory, selector
              - the ForML providers users name in config.toml and application descriptors (thin over runtime)
    ops       - operator tools: snapshot/verify, gc, lifecycle rules, copy (no click)
    cli, ui, demo
              - the ``forml-s3`` command line, the registry browser, the demo project and its S3 endpoint
"""

__version__ = '0.1.0'
