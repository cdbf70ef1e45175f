"""One module per `kiln` subcommand; each exposes `register(subparsers)`."""
