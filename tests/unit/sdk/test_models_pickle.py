"""aggregator.sdk.models: botocore's JSON data read from the packaging step's pickle only
when the pickle names the exact bytes beside it; otherwise botocore's own JSON loading."""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path
from typing import Any

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
        assert ours == theirs
        assert_same_order(ours, theirs)


def assert_same_order(ours: Any, theirs: Any) -> None:
    """Every mapping's keys in the same order (botocore keeps a model's member order)."""
    if isinstance(theirs, dict):
        assert type(ours) is dict and list(ours) == list(theirs)
        for key in theirs:
            assert_same_order(ours[key], theirs[key])
    elif isinstance(theirs, list):
        for one, other in zip(ours, theirs, strict=True):
            assert_same_order(one, other)


def test_a_pickle_of_an_older_format_is_ignored(tmp_path: Path) -> None:
    source = write(tmp_path, "model.json", {"v": 1})
    _, length, crc = models.stamp(source.read_bytes())
    source.with_name("model.json" + models.SUFFIX).write_bytes(pickle.dumps(((1, length, crc), {"v": "old"})))
    assert models.PickledJSONFileLoader().load_file(str(tmp_path / "model")) == {"v": 1}


def test_the_service_loader_loads_what_botocores_loads_and_refuses_the_same() -> None:
    import botocore.loaders
    import pytest
    from botocore.exceptions import DataNotFoundError, UnknownServiceError

    theirs, ours = botocore.loaders.Loader(), models.create_loader(None)
    cases = (("s3", "service-2", None), ("dynamodb", "endpoint-rule-set-1", None),
             ("dynamodb", "endpoint-rule-set-1", "2011-12-05"), ("ec2", "paginators-1", None),
             ("sqs", "service-2", None))
    for service, type_name, version in cases:
        assert ours.load_service_model(service, type_name, version) == theirs.load_service_model(
            service, type_name, version), (service, type_name, version)
    with pytest.raises(UnknownServiceError, match=r"Valid service names are: .*dynamodb"):
        ours.load_service_model("no-such-service", "service-2")
    with pytest.raises(DataNotFoundError):
        ours.load_service_model("s3", "service-2", "1999-01-01")


def test_the_service_loader_never_lists_every_service(monkeypatch: Any) -> None:
    loader = models.create_loader(None)

    def listing(type_name: str) -> list[str]:
        raise AssertionError(f"listed every service for {type_name}")

    monkeypatch.setattr(loader, "list_available_services", listing)
    assert loader.load_service_model("secretsmanager", "service-2")["metadata"]["endpointPrefix"] == "secretsmanager"


def test_the_data_path_folders_come_first(monkeypatch: Any, tmp_path: Path) -> None:
    import os

    loader = models.create_loader(f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    assert loader.search_paths[:2] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert str(BOTOCORE_DATA) in loader.search_paths
