"""Events, triggers and notifications: the fleet's log of what happened, and what acts on it."""
