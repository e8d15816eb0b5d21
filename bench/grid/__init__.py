"""What a grid runs: presets and their schema, the component registry, grid expansion."""
