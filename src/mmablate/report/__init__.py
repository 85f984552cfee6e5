"""Results: the tidy metrics table, paper-style tables and figures."""
