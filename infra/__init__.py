"""Infrastructure: settings, event-store wiring, blob store, view database, composition root."""
