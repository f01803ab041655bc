-- Sales and refunds by day and product.
-- Answers: on each day (the order's venue-local date), how many tickets of each product
-- were sold and refunded, and for how much. Amounts are in minor units (40000 = 400.00).
-- Only the latest version of each order counts, so an order S-360 sent twice (in two
-- bodies, or twice in one) is not counted twice. A refund is a movement of type REFUND, usually in an order of its own.
-- A reservation (RESERVATION) holds a ticket without selling it: it is in no amount here.
SELECT
    m.institution,
    m.date,
    m.product_code,
    max(m.product) AS product,
    count(*) FILTER (WHERE m.movement_type = 'SALE') AS tickets_sold,
    count(*) FILTER (WHERE m.movement_type = 'REFUND') AS tickets_refunded,
    coalesce(sum(m.amount) FILTER (WHERE m.movement_type = 'SALE'), 0) AS sales_amount,
    coalesce(-sum(m.amount) FILTER (WHERE m.movement_type = 'REFUND'), 0) AS refunds_amount,
    coalesce(sum(m.amount) FILTER (WHERE m.movement_type IN ('SALE', 'REFUND')), 0) AS net_amount
FROM order_movements AS m
JOIN orders_current AS o
    ON o.institution = m.institution
    AND o.order_id = m.order_id
    AND o._event_id = m._event_id
    AND o._position = m._position
GROUP BY m.institution, m.date, m.product_code
ORDER BY m.institution, m.date, m.product_code;
