"""Agent coordination over RabbitMQ: topology, messaging, mailbox, notices, event bus (no app imports)."""
