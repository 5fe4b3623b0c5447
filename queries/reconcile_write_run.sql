-- The run row of a reconcile (reconcile_runs): one INSERT ... SELECT of parameters. On chDB this is
-- ~50 ms cheaper than a columnar insert of a single row through Arrow.
INSERT INTO {db:Identifier}.reconcile_runs
SELECT
    {run_id:String},
    {started_us:UInt64},
    {finished_us:UInt64},
    {window_from_us:UInt64},
    {window_to_us:UInt64},
    {grace_s:UInt32},
    {params:String},
    {verdict_names:Array(String)},
    {verdict_counts:Array(UInt64)}
