-- The run row of a replay (replay_runs): one INSERT ... SELECT of parameters.
INSERT INTO {db:Identifier}.replay_runs
SELECT
    {run_id:String},
    {started_us:UInt64},
    {finished_us:UInt64},
    {user:String},
    {host:String},
    {mode:String},
    {reconcile_run:String},
    {window_from_us:UInt64},
    {window_to_us:UInt64},
    {note:String},
    {params:String},
    {planned:UInt64},
    {published:UInt64},
    {skipped:UInt64},
    {failed:UInt64}
