"""Agent coordination over RabbitMQ: topology, messaging, mailbox, event bus, workflows (no app imports)."""
