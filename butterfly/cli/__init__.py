"""The ``butterfly`` command: the original C++ client's commands and output.

Modules: ``args`` (the grammar and help texts), ``requests`` (arguments to
protocol requests and answers back, pure), ``output`` (text and JSON
formats, pure), ``session`` (the seam to the daemon), ``commands`` (one
handler per command) and ``main`` (the entry point, the only place that
prints errors and exits). The CLI needs only the API's client, codec and
protobuf modules, and the model's validation-free value types; it never
imports the store, the service, the data plane or the daemon.
"""
