"""The dashboard's widgets: status line, sessions, turn table, turn detail, screens."""
