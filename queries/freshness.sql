-- The newest data per stream and institution.
-- Answers: is every venue still sending? For each stream: how many rows the lake holds,
-- when the newest body arrived (_received_at) and the newest time its records carry. A
-- venue whose newest body is hours older than the others' has stopped sending, or its
-- bodies are being refused (see `datx events list` and /metrics).
SELECT 'contacts' AS stream, institution, count(*) AS row_count,
    max(_received_at) AS newest_received_at, max(last_update_date) AS newest_record_time
FROM contacts
GROUP BY institution
UNION ALL
SELECT 'orders' AS stream, institution, count(*) AS row_count,
    max(_received_at) AS newest_received_at, max(creation_date_time) AS newest_record_time
FROM orders
GROUP BY institution
UNION ALL
SELECT 'ticketchecks' AS stream, institution, count(*) AS row_count,
    max(_received_at) AS newest_received_at, max(access_time) AS newest_record_time
FROM ticket_checks
GROUP BY institution
ORDER BY stream, institution;
