-- New and updated contacts by week.
-- Answers: how many contacts S-360 created in each week, and how many were changed in a
-- later week than the one they were created in. Each contact counts once, by its current
-- state (its latest body): new in its creation week, updated in the week of its last
-- update. Weeks start on Monday, in UTC.
SELECT institution, week, sum(created) AS new_contacts, sum(updated) AS updated_contacts
FROM (
    SELECT institution, CAST(date_trunc('week', CAST(creation_date AS DATE)) AS DATE) AS week,
        1 AS created, 0 AS updated
    FROM contacts_current
    WHERE creation_date IS NOT NULL
    UNION ALL
    SELECT institution, CAST(date_trunc('week', CAST(last_update_date AS DATE)) AS DATE) AS week,
        0 AS created, 1 AS updated
    FROM contacts_current
    WHERE date_trunc('week', CAST(last_update_date AS DATE))
        > date_trunc('week', CAST(creation_date AS DATE))
) AS changes
GROUP BY institution, week
ORDER BY institution, week;
