"""botocore's JSON data (service models, endpoint rulesets, endpoints.json), read from a
pickle made at packaging time when there is one.

Parsing that JSON is most of what building the function's clients costs: ~50 ms of a cold
start for endpoints.json and the S3, DynamoDB and Secrets Manager models, against ~9 ms to
unpickle the same data. The pickles hold plain dicts where botocore's loader builds
``OrderedDict`` objects: unpickling those costs twice as much (~17 ms), and a dict keeps its
order just the same; botocore uses nothing that only an ``OrderedDict`` has. The
packaging step (local/artifact.py) writes ``NAME.json.pickle`` beside ``NAME.json`` or
``NAME.json.gz`` for the files a first invocation reads. A pickle is used only when it
names the exact bytes of the JSON file beside it (length and CRC-32); any other case, and
every file without a pickle, is read by botocore's loader as usual.

The pickles are part of the artifact, like the .pyc files: same trust, same origin.

:class:`ServiceDataLoader` is botocore's loader without its costliest habit: listing every
service it has to load one (below).
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import zlib
from typing import Any

from botocore.exceptions import DataNotFoundError
from botocore.loaders import JSONFileLoader, Loader, instance_cache

from aggregator.sdk import botocore_private

SUFFIX = ".pickle"
# The JSON forms botocore reads, in its order of preference.
JSON_FORMS = (".json", ".json.gz")
_FORMAT = 2  # 1: OrderedDict objects


def stamp(source: bytes) -> tuple[int, int, int]:
    """What a pickle records of its JSON source: format, length, CRC-32."""
    return _FORMAT, len(source), zlib.crc32(source)


def dump(name: str, source: bytes) -> bytes:
    """The pickle for the JSON file ``name`` (``.json`` or ``.json.gz``) holding ``source``:
    the data botocore's loader makes of it (in plain dicts), and the source's stamp."""
    text = (gzip.decompress(source) if name.endswith(".gz") else source).decode("utf-8")
    loaded = json.loads(text)
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


class ServiceDataLoader(Loader):
    """botocore's data loader, checking only the service asked for.

    botocore's ``load_service_model`` lists every service in its data folders (~420 folders:
    a directory read and a stat each, ~10 ms per model type in a cold start) just to check that
    the one asked for is among them. The same test, made on that service's folder alone: it
    has a version folder holding the type's file. An unknown service is left to botocore,
    whose error lists the known ones.
    """

    @instance_cache
    def load_service_model(self, service_name: str, type_name: str, api_version: str | None = None) -> Any:
        try:
            latest = self.determine_latest_version(service_name, type_name)
        except DataNotFoundError:
            return super().load_service_model(service_name, type_name, api_version)  # raises UnknownServiceError
        version = latest if api_version is None else api_version
        model = self.load_data(os.path.join(service_name, version, type_name))
        botocore_private.add_model_extras(self, model, service_name=service_name, type_name=type_name,
                                          api_version=version)
        return model


def create_loader(search_path_string: str | None) -> ServiceDataLoader:
    """As ``botocore.loaders.create_loader`` (``AWS_DATA_PATH``'s folders first), reading
    the packaging step's pickles."""
    extra = None
    if search_path_string:
        extra = [os.path.expanduser(os.path.expandvars(path)) for path in search_path_string.split(os.pathsep)]
    return ServiceDataLoader(extra_search_paths=extra, file_loader=PickledJSONFileLoader())
