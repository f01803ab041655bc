-- Tickets sold versus tickets checked in, per performance: the no-show rate.
-- Answers: for each performance, how many tickets are sold (a SALE movement of the latest
-- version of its order, not refunded since), how many of them passed a gate (a check
-- with result OK and flow IN, joined on movement_id), and the share that never came.
WITH sold AS (
    SELECT m.institution, m.performance_id, m.performance, m.movement_id
    FROM order_movements AS m
    JOIN orders_current AS o
        ON o.institution = m.institution
        AND o.order_id = m.order_id
        AND o._event_id = m._event_id
        AND o._position = m._position
    WHERE m.movement_type = 'SALE'
        AND NOT EXISTS (
            SELECT 1 FROM order_movements AS r
            WHERE r.institution = m.institution AND r.refunded_movement_id = m.movement_id
        )
),
checked_in AS (
    SELECT DISTINCT institution, movement_id
    FROM ticket_checks
    WHERE result = 'OK' AND check_flow = 'IN'
)
SELECT
    s.institution,
    s.performance_id,
    max(s.performance) AS performance,
    count(*) AS tickets_sold,
    count(c.movement_id) AS tickets_checked_in,
    round(1.0 - CAST(count(c.movement_id) AS DOUBLE) / count(*), 4) AS no_show_rate
FROM sold AS s
LEFT JOIN checked_in AS c
    ON c.institution = s.institution AND c.movement_id = s.movement_id
GROUP BY s.institution, s.performance_id
ORDER BY s.institution, s.performance_id;
