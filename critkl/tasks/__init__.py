"""Single-turn text tasks behind one interface (`base.TextTask`): addition (the paper's),
multiplication with a scratchpad, path-star graphs; and the registry that builds a task from
its name (`registry.make`)."""
