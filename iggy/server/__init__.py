"""The `iggy-server` command: `cli` parses arguments and the config (importing nothing heavy),
`node` assembles and runs one node (storage, metadata, control plane, engines, HTTP)."""
