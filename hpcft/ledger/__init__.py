"""The ledger: the SQLModel store of jobs, events, sweeps and model assets (SQLite, MariaDB, PostgreSQL), its
query builder and fast read path, access rules, team (PostgreSQL row-level security) set-up, notifications and
migrations. Imports the base modules, `hpcft.config` and `hpcft.rundir`, nothing above.
"""
