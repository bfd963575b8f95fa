"""Print, as JSON, the descriptors of keyguard's messages as seen by one proto source.

Run as `python -m tests.support.describe_protos keyguard|xds NAME...`. keyguard's
and xds-protos's messages share full names, so each side must be loaded in a
process of its own: one default descriptor pool cannot hold both.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor

MODULES = {
    "keyguard": [
        "keyguard._proto.envoy.service.auth.v3.external_auth_pb2",
        "keyguard._proto.envoy.service.auth.v3.attribute_context_pb2",
        "keyguard._proto.envoy.service.accesslog.v3.als_pb2",
        "keyguard._proto.envoy.data.accesslog.v3.accesslog_pb2",
        "keyguard._proto.envoy.config.core.v3.base_pb2",
        "keyguard._proto.envoy.config.core.v3.address_pb2",
        "keyguard._proto.envoy.type.v3.http_status_pb2",
        "keyguard._proto.google.rpc.status_pb2",
    ],
    "xds": [
        "envoy.service.auth.v3.external_auth_pb2",
        "envoy.service.auth.v3.attribute_context_pb2",
        "envoy.service.accesslog.v3.als_pb2",
        "envoy.data.accesslog.v3.accesslog_pb2",
        "envoy.config.core.v3.base_pb2",
        "envoy.config.core.v3.address_pb2",
        "envoy.type.v3.http_status_pb2",
        "google.rpc.status_pb2",
    ],
}


def describe_message(desc: Descriptor) -> dict[str, Any]:
    return {
        "fields": {
            f.name: {
                "number": f.number,
                "type": f.type,
                "repeated": f.is_repeated,
                "type_name": (f.message_type or f.enum_type).full_name
                if (f.message_type or f.enum_type)
                else "",
                "oneof": f.containing_oneof.name if f.containing_oneof else "",
            }
            for f in desc.fields
        },
        "nested": [n.full_name for n in desc.nested_types],
        "enums": [e.full_name for e in desc.enum_types],
    }


def describe_enum(desc: EnumDescriptor) -> dict[str, Any]:
    return {"values": {v.name: v.number for v in desc.values}}


def main() -> None:
    side = sys.argv[1]
    for module in MODULES[side]:
        importlib.import_module(module)
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    out: dict[str, Any] = {}
    for name in sys.argv[2:]:
        kind, _, full = name.partition(":")
        if kind == "message":
            out[name] = describe_message(pool.FindMessageTypeByName(full))
        elif kind == "enum":
            out[name] = describe_enum(pool.FindEnumTypeByName(full))
        elif kind == "method":
            service, _, method = full.rpartition(".")
            svc = pool.FindServiceByName(service)
            m = svc.FindMethodByName(method)
            out[name] = {
                "input": m.input_type.full_name,
                "output": m.output_type.full_name,
                # StreamAccessLogs is client streaming: a unary stub would not match Envoy's.
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
