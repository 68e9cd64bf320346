"""A bucket of the embedded endpoint saved to a folder and brought back: what lets ``forml-s3 demo --keep DIR``
leave a ForML home that works after the demo (``forml-s3 serve-s3 --state DIR`` serves it again).

``<DIR>/s3/endpoint.json`` records the port the kept ``config.toml`` points at and the bucket; ``<DIR>/s3/objects/``
holds one file per object (named by a counter) and ``<DIR>/s3/objects.json`` each object's key, user metadata and
tags. A save writes the new snapshot beside the old one, then swaps the folder names, so an interrupted save
leaves the previous snapshot whole.
"""

import json
import pathlib
import shutil
import typing

FOLDER = 's3'


def endpoint(state: pathlib.Path) -> dict[str, typing.Any]:
    """The recorded ``{"port": ..., "bucket": ...}`` of a kept state (``FileNotFoundError`` if none)."""
    return json.loads((state / FOLDER / 'endpoint.json').read_text())


def save(client: typing.Any, bucket: str, port: int, state: pathlib.Path) -> int:
    """Save every object of ``bucket`` (through a boto3 ``client``) under ``state``; returns how many."""
    target = state / FOLDER
    fresh = state / f'{FOLDER}.new'
    shutil.rmtree(fresh, ignore_errors=True)
    (fresh / 'objects').mkdir(parents=True)
    index = []
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=bucket):
        for obj in page.get('Contents', ()):
            key = obj['Key']
            response = client.get_object(Bucket=bucket, Key=key)
            name = f'{len(index):06d}'
            (fresh / 'objects' / name).write_bytes(response['Body'].read())
            tags = client.get_object_tagging(Bucket=bucket, Key=key).get('TagSet', [])
            index.append({'key': key, 'file': name, 'metadata': response.get('Metadata') or {}, 'tags': tags})
    (fresh / 'objects.json').write_text(json.dumps(index, indent=1))
    (fresh / 'endpoint.json').write_text(json.dumps({'port': port, 'bucket': bucket}))
    old = state / f'{FOLDER}.old'
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    fresh.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return len(index)


def restore(client: typing.Any, state: pathlib.Path) -> int:
    """Create the recorded bucket and put back every saved object with its metadata and tags; returns how many."""
    source = state / FOLDER
    bucket = endpoint(state)['bucket']
    client.create_bucket(Bucket=bucket)
    index = json.loads((source / 'objects.json').read_text())
    for obj in index:
        extra = {'Metadata': obj['metadata']} if obj['metadata'] else {}
        if obj['tags']:
            extra['Tagging'] = '&'.join(f'{t["Key"]}={t["Value"]}' for t in obj['tags'])
        client.put_object(Bucket=bucket, Key=obj['key'], Body=(source / 'objects' / obj['file']).read_bytes(), **extra)
    return len(index)
