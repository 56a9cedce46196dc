"""Lenient jsonschema checks against the OpenAPI extracts in shared/realtime-api.

Per SCHEMA_README.md: optional fields may be null and extra keys are allowed.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

# shared/ sits beside the checkout (as on CI); REALTIME_SCHEMA_DIR overrides.
SCHEMA_DIR = Path(os.environ.get("REALTIME_SCHEMA_DIR", Path(__file__).resolve().parents[3] / "shared" / "realtime-api"))
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _lenient(node):
    if isinstance(node, list):
        return [_lenient(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _lenient(v) for k, v in node.items() if k != "discriminator"}
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
        return node
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    props = node.get("properties")
    if isinstance(props, dict):
        required = set(node.get("required", []))
        node["properties"] = {
            name: schema if name in required else {"anyOf": [schema, {"type": "null"}]}
            for name, schema in props.items()
        }
    return node


@lru_cache(maxsize=None)
def _document(filename: str) -> dict:
    with open(SCHEMA_DIR / filename, encoding="utf-8") as fh:
        return _lenient(yaml.load(fh, Loader=_Loader))


@lru_cache(maxsize=None)
def validator(filename: str, schema_name: str) -> Draft202012Validator:
    document = _document(filename)
    uri = f"urn:realtime:{filename}"
    registry = Registry().with_resource(uri, Resource.from_contents(document, default_specification=DRAFT202012))
    schema = {"$ref": f"{uri}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=None)
def server_event_schemas() -> dict[str, str]:
    """event type -> schema name, read from the RealtimeServerEvent union."""
    schemas = _document("server_events.yaml")["components"]["schemas"]
    mapping = {}
    for ref in schemas["RealtimeServerEvent"]["anyOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        type_schema = schemas[name]["properties"]["type"]
        # _lenient wrapped optional props; "type" is required so it is intact.
        for value in type_schema.get("enum", []):
            mapping[value] = name
    return mapping


def check_server_event(event: dict) -> None:
    """Raise AssertionError if the event does not match its schema."""
    assert isinstance(event.get("event_id"), str) and event["event_id"].startswith("event_"), event
    name = server_event_schemas().get(event.get("type"))
    assert name is not None, f"unknown server event type {event.get('type')!r}"
    errors = sorted(validator("server_events.yaml", name).iter_errors(event), key=lambda e: list(e.path))
    assert not errors, f"{event['type']} violates {name}: " + "; ".join(
        f"{list(e.path)}: {e.message[:300]}" for e in errors[:5])


def check_server_events(events: list[dict]) -> None:
    for event in events:
        check_server_event(copy.deepcopy(event))


def check_client_secret_response(body: dict) -> None:
    errors = list(validator("client_secrets.yaml", "RealtimeCreateClientSecretResponse").iter_errors(body))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message[:300]}" for e in errors[:5])
