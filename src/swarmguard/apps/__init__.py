"""Applications built on the public API (the ``swarmguard`` subcommands' engines)."""
