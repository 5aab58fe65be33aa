"""Sub-commands of the `komut` CLI.

Each module listed here exposes `register(subparsers)`, which adds its sub-command(s) and sets
`func` to a callable taking the parsed arguments and returning the process exit code. Keeping
the list as data lets each feature own its command without editing a central dispatcher.
"""

COMMAND_MODULES = (
    "gateway.commands.validate",
    "gateway.commands.serve",
    "gateway.commands.demo",
    "gateway.commands.lifecycle",
    "gateway.commands.conformance",
    "gateway.commands.registry",
    "gateway.commands.route",
    "gateway.commands.protect",
    "gateway.commands.pki",
    "gateway.commands.users",
)
