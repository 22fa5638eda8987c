"""`iggy`: the administration command line, in the style of Apache Iggy's CLI.

It talks to a server over TCP with the 0.9.0 binary protocol, using the project's own codec
(`iggy.protocol.wire`, `iggy.protocol.batch`), so it needs nothing beyond the server package:
`client.AdminClient` sends frames and decodes replies, `cli` parses arguments and prints
tables (rich when installed, plain text otherwise) or JSON (`--json`).
"""
