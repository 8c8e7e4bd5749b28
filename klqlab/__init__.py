"""KLQ Lab as an application: the commands that start its services (`klq up`, `klq api`, `klq worker`,
`klq ui`, `klq migrate`) and the `klq` console script, which also runs the library's own commands
(klq/cli.py). The top of the dependency direction (docs/ARCHITECTURE.md): it may import klq, backend,
worker and start frontend; nothing imports it."""
