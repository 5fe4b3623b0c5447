-- Drop a staging table of the run (expected_table.sql). {table} is generated, never user input.
DROP TABLE IF EXISTS {db:Identifier}.{table:Identifier}
