"""The central side: Flower ServerApp, strategies, and the services for data scientists."""
