"""The only module that touches private botocore attributes.

botocore has no public way to (1) ask a client for the endpoint its ruleset gives one
request without sending it, (2) read a client's credentials (sessions have
``get_credentials()``; a client does not), (3) read the trust store a client verifies
with, (4) read a botocore session's config variables through a boto3 session, or (5) add
a model's ``*-extras`` files as botocore's data loader does when it loads the model. Each
is reached here, by one function each, and ``tests/unit/sdk/test_botocore_private.py``
fails by name when a botocore upgrade removes one of them.
"""

from __future__ import annotations

from typing import Any

from aggregator.base.errors import ConfigError

# (owner, attribute) pairs this module relies on; checked by the tests.
RELIED_ON = (
    ("botocore.client.BaseClient", "_resolve_endpoint_ruleset"),
    ("botocore.client.BaseClient", "_request_signer"),
    ("botocore.signers.RequestSigner", "_credentials"),
    ("boto3.session.Session", "_session"),
    ("botocore.client.BaseClient", "_endpoint"),
    ("botocore.endpoint.Endpoint", "http_session"),
    ("botocore.httpsession.URLLib3Session", "_verify"),
    ("botocore.loaders.Loader", "_find_extras"),
    ("botocore.loaders.Loader", "_extras_processor"),
)


def resolve_endpoint(client: Any, operation: str, params: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(url, headers, properties)`` botocore's endpoint ruleset gives ``operation`` with
    ``params``, exactly as the client would send it; nothing is sent."""
    operation_model = client.meta.service_model.operation_model(operation)
    url, headers, properties = client._resolve_endpoint_ruleset(operation_model, params, {})
    return str(url), dict(headers or {}), dict(properties or {})


def client_credentials(client: Any) -> Any:
    """The client's botocore ``Credentials`` (static or refreshable), or None."""
    signer = getattr(client, "_request_signer", None)
    if signer is None:
        raise ConfigError("this botocore client has no request signer: cannot read its credentials")
    return getattr(signer, "_credentials", None)


def client_verify(client: Any) -> bool | str:
    """The trust store the client verifies with: its ``verify=``, else ``AWS_CA_BUNDLE`` /
    the config file's ``ca_bundle``, else ``REQUESTS_CA_BUNDLE``, else ``True`` (botocore
    resolves these once, when it builds the client)."""
    verify = client._endpoint.http_session._verify
    if verify is None or isinstance(verify, bool):
        return True if verify is None else verify
    return str(verify)


def botocore_session(session: Any) -> Any:
    """The botocore session under a boto3 session (a botocore session passes through)."""
    return getattr(session, "_session", session)


def add_model_extras(loader: Any, model: dict[str, Any], *, service_name: str, type_name: str,
                     api_version: str) -> None:
    """Merge into ``model`` the ``*-extras`` files that ``loader`` has for it, as botocore's
    ``Loader.load_service_model`` does."""
    loader._extras_processor.process(model, loader._find_extras(service_name, type_name, api_version))
