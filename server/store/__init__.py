"""The SQL store: tables, engine, migrations. Knows no protocol."""
