"""Where a job's state lives: the `Backend` protocol (`base`) and one module per host: `local` (a workspace on this
machine), `host` (the plugin-era Transformer Lab, through its SDK), `lab` (today's Transformer Lab tasks, through
`lab`)."""
