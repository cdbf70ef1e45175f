"""kiln's pipeline: config, Ray Data runner, global stages, statistics, reports and the CLI."""
