"""The ``lens-pivotal`` command line (``python -m lens_pivotal`` runs the same): :mod:`lens_pivotal.cli.main` builds
the parser, :mod:`lens_pivotal.cli.arguments` holds what every command shares."""
