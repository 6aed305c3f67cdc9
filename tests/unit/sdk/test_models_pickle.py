"""aggregator.sdk.models: botocore's JSON data read from the packaging step's pickle only
when the pickle names the exact bytes beside it; otherwise botocore's own JSON loading."""

from __future__ import annotations

import gzip
import json
import pickle
from collections import OrderedDict
from pathlib import Path

import botocore
from botocore.loaders import JSONFileLoader

from aggregator.sdk import models

BOTOCORE_DATA = Path(botocore.__file__).parent / "data"


def write(tmp_path: Path, name: str, document: dict[str, object]) -> Path:
    path = tmp_path / name
    raw = json.dumps(document).encode()
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return path


def test_a_matching_pickle_is_read_instead_of_the_json(tmp_path: Path) -> None:
    for name in ("plain.json", "zipped.json.gz"):
        source = write(tmp_path, name, {"from": "json"})
        # The same stamp, other content: proves which one was read.
        source.with_name(name + models.SUFFIX).write_bytes(
            pickle.dumps((models.stamp(source.read_bytes()), {"from": "pickle"})))
        assert models.PickledJSONFileLoader().load_file(str(tmp_path / name.split(".")[0])) == {"from": "pickle"}


def test_a_pickle_of_other_bytes_or_a_broken_one_is_ignored(tmp_path: Path) -> None:
    source = write(tmp_path, "model.json", {"v": 1})
    pickled = tmp_path / ("model.json" + models.SUFFIX)
    pickled.write_bytes(models.dump("model.json", source.read_bytes()))
    write(tmp_path, "model.json", {"v": 2})  # the source changed after the pickle was made
    assert models.PickledJSONFileLoader().load_file(str(tmp_path / "model")) == {"v": 2}
    for garbage in (b"", b"not a pickle", pickle.dumps("one value")):
        pickled.write_bytes(garbage)
        assert models.PickledJSONFileLoader().load_file(str(tmp_path / "model")) == {"v": 2}
    assert models.PickledJSONFileLoader().load_file(str(tmp_path / "absent")) is None


def test_the_pickle_holds_what_botocores_loader_makes_of_the_json(tmp_path: Path) -> None:
    for relative in ("s3/2006-03-01/service-2.json.gz", "endpoints.json"):
        source = BOTOCORE_DATA / relative
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes())
        copy.with_name(copy.name + models.SUFFIX).write_bytes(models.dump(relative, source.read_bytes()))
        stem = str(tmp_path / source.name.split(".")[0])
        ours = models.PickledJSONFileLoader().load_file(stem)
        theirs = JSONFileLoader().load_file(stem)
        assert type(ours) is OrderedDict and ours == theirs
        assert list(ours) == list(theirs)
