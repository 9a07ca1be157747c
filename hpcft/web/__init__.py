"""The web console (`hpcft ui`): server-rendered pages over the same functions as the CLI (hpcft.ledger, hpcft.jobs,
hpcft.rundir, hpcft.registry), beside hpcft/cli/ in the layers. `app.create_app` builds the ASGI app; the CLI command
that serves it is hpcft/cli/web_cmds.py. Static files and templates live in this package (no CDN, no build step)."""
