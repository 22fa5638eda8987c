# cython: language_level=3
"""The protocol numbers as C enums (generated `ccodes.pxd`), seen from Python.

C code cimports the enums of ccodes.pxd: `Operation` (OP_*), `Command` (CMD_ + the name in
iggy.protocol.codes), `IdentifierKind`, `ConsumerKind`, `Partitioning`, `PollingStrategy` and
`Error` (E_ + the ErrorCode name). Their home is iggy/protocol/codes.py and errors.py, and
scripts/gen_ccodes.py writes the .pxd from them when setup.py builds. Python code uses codes.py and errors.py;
this module only exposes the compiled enums so that tests/test_protocol_homes.py can check,
name by name and value by value, that the build agrees with the tables.
"""
