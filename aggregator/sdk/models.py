"""botocore's JSON data (service models, endpoint rulesets, endpoints.json), read from a
pickle made at packaging time when there is one.

Parsing that JSON is most of what building the function's clients costs: ~50 ms of a cold
start for endpoints.json and the S3, DynamoDB and Secrets Manager models, against ~17 ms to
unpickle the same objects (``OrderedDict`` objects, as botocore's own loader builds them). The
packaging step (local/artifact.py) writes ``NAME.json.pickle`` beside ``NAME.json`` or
``NAME.json.gz`` for the files a first invocation reads. A pickle is used only when it
names the exact bytes of the JSON file beside it (length and CRC-32); any other case, and
every file without a pickle, is read by botocore's loader as usual.

The pickles are part of the artifact, like the .pyc files: same trust, same origin.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import zlib
from collections import OrderedDict
from typing import Any

from botocore.loaders import JSONFileLoader

SUFFIX = ".pickle"
# The JSON forms botocore reads, in its order of preference.
JSON_FORMS = (".json", ".json.gz")
_FORMAT = 1


def stamp(source: bytes) -> tuple[int, int, int]:
    """What a pickle records of its JSON source: format, length, CRC-32."""
    return _FORMAT, len(source), zlib.crc32(source)


def dump(name: str, source: bytes) -> bytes:
    """The pickle for the JSON file ``name`` (``.json`` or ``.json.gz``) holding ``source``:
    the objects botocore's loader makes of it (``OrderedDict`` objects), and the source's stamp."""
    text = (gzip.decompress(source) if name.endswith(".gz") else source).decode("utf-8")
    loaded = json.loads(text, object_pairs_hook=OrderedDict)
    return pickle.dumps((stamp(source), loaded), protocol=pickle.HIGHEST_PROTOCOL)


class PickledJSONFileLoader(JSONFileLoader):
    """botocore's file loader, reading the packaging step's pickle when it matches its source."""

    def load_file(self, file_path: str) -> Any:
        for form in JSON_FORMS:
            source_path = file_path + form
            if os.path.isfile(source_path):
                cached = self._cached(source_path)
                if cached is not None:
                    return cached
                break
        return super().load_file(file_path)

    @staticmethod
    def _cached(source_path: str) -> Any:
        try:
            # One read, then loads: pickle.load on the file object reads in small pieces.
            with open(source_path + SUFFIX, "rb") as handle:
                recorded, data = pickle.loads(handle.read())
            with open(source_path, "rb") as handle:
                source = handle.read()
        except Exception:  # a damaged pickle of any kind: botocore reads the JSON itself
            return None
        return data if recorded == stamp(source) else None
