"""`dsrhn`: the command line, the front door above every stage. One module per command, each with
`NAME`, `HELP`, `register(subparsers)` and `run(args)`; cli/main.py lists them in the order `dsrhn --help`
shows them."""
