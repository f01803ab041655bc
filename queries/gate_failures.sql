-- Gate failures by reason and hour.
-- Answers: in each hour of each venue-local day, how many ticket checks failed and why
-- (failure_reason, e.g. NO_MORE_ENTRY_ALLOWED_TODAY). A spike of one reason at one hour
-- points at a gate, a rule or a rush. Hours are UTC (access_time is stored in UTC); the
-- date is the venue's own.
SELECT
    institution,
    date,
    CAST(date_part('hour', access_time) AS INT) AS hour_utc,
    failure_reason,
    count(*) AS failures
FROM ticket_checks
WHERE result <> 'OK'
GROUP BY institution, date, CAST(date_part('hour', access_time) AS INT), failure_reason
ORDER BY institution, date, hour_utc, failure_reason;
