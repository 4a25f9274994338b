"""The wire protocol: ZeroMQ REQ/REP frames of protobuf messages.

``proto/`` holds the .proto files and their generated code; ``crypto`` the
AES-256 frame encryption; ``codec`` the envelope; ``v0`` the handlers of
MessageV0 requests (protobuf in, service call, protobuf out); ``server``
the REP loop; ``client`` the REQ side the CLI uses. Imports the service and
the model; never a concrete store or data plane.
"""
