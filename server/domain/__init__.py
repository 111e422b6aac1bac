"""Pure types: statuses with their transition tables, priorities, value objects. No I/O."""
