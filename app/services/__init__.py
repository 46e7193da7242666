"""Domain logic; routes and tasks call these, never the models directly."""
