from hubprune.cli import entry

entry()
