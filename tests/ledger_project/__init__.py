"""A minimal Kedro project package for the ledger tests: its settings register the
project's ResourceLedgerHook, so runner workers (which configure this package) record
their nodes as the real project's workers do."""
