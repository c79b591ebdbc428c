"""chanprune's command line (click). Installed as the `chanprune_cli` package; thin commands only."""
