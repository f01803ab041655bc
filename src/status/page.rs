//! The status page: an `Overview` as one self-contained HTML document (inline CSS and
//! SVG, no script, no external asset), a table per institution that becomes a list of
//! cards on a phone. Each figure's cell carries its raw value in `data-value`, so that a
//! test or a scraper reads numbers rather than prose.

use std::fmt::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{Overview, SourceStatus, State};

/// The page reloads itself this often (a meta refresh: no script needed).
const REFRESH_SECONDS: u32 = 30;

const STYLE: &str = r#"
:root { color-scheme: light dark; --ok: #1a7f37; --late: #b35900; --silent: #c62828;
  --unwatched: #6e7781; --line: #d0d7de; --muted: #57606a; --bar: #4063d8; }
@media (prefers-color-scheme: dark) { :root { --line: #30363d; --muted: #9198a1; --bar: #7d9bff; } }
* { box-sizing: border-box; }
body { font: 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
  padding: 1rem; max-width: 84rem; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
h2 .every { font-weight: normal; color: var(--muted); font-size: .9rem; }
.meta, footer { color: var(--muted); font-size: .85rem; margin: .25rem 0; }
.counts span { margin-right: .75rem; font-weight: 600; }
.alert { border-left: 4px solid var(--silent); padding: .5rem .75rem; margin: .75rem 0; }
.note { border-left: 4px solid var(--late); padding: .5rem .75rem; margin: .75rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid var(--line);
  vertical-align: middle; }
th { font-size: .8rem; color: var(--muted); font-weight: 600; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: .05rem .5rem; border-radius: 1rem; color: #fff;
  font-size: .8rem; font-weight: 600; }
.badge.ok { background: var(--ok); } .badge.late { background: var(--late); }
.badge.silent { background: var(--silent); } .badge.unwatched { background: var(--unwatched); }
.sub { color: var(--muted); font-size: .8rem; display: block; }
svg.chart { display: block; width: 12rem; height: 2rem; }
svg.chart rect { fill: var(--bar); }
svg.chart line { stroke: var(--line); }
@media (max-width: 760px) {
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { border: 1px solid var(--line); border-radius: .5rem; margin: 0 0 .75rem; padding: .25rem .5rem; }
  td { border: 0; display: flex; justify-content: flex-end; align-items: baseline; gap: .4rem;
    padding: .2rem 0; text-align: right; }
  td::before { content: attr(data-label); color: var(--muted); text-align: left;
    margin-right: auto; }
  .sub { display: inline; }
  svg.chart { width: 60%; }
}
"#;

/// The whole page.
pub fn render(overview: &Overview) -> String {
    let mut html = String::with_capacity(16 * 1024 + overview.sources.len() * 4096);
    let now = overview.generated_at;
    html.push_str("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let _ = writeln!(
        html,
        "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">"
    );
    let _ = writeln!(
        html,
        "<title>datx · {}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        headline(overview)
    );
    html.push_str("<header>\n<h1>datx status</h1>\n<p class=\"counts\">");
    for state in [State::Ok, State::Late, State::Silent, State::Unwatched] {
        let count = overview.sources.iter().filter(|s| s.state == state).count();
        let _ = write!(
            html,
            "<span class=\"count {0}\" data-value=\"{count}\">{count} {0}</span>",
            state.name()
        );
    }
    html.push_str("</p>\n");
    let _ = write!(
        html,
        "<p class=\"meta\">As of {} · tables as of commit <span class=\"lake-version\">{}</span>",
        utc(now),
        overview.lake_version
    );
    match overview.refusals_since {
        Some(since) => {
            let _ = write!(
                html,
                " · refusals counted since this process started, {} ago",
                ago((now - since).num_seconds())
            );
        }
        None => html.push_str(" · refusals are known to a running <code>datx serve</code> only"),
    }
    html.push_str("</p>\n");
    if let Some(error) = &overview.compaction_failing {
        let _ = writeln!(
            html,
            "<p class=\"alert compaction\">Compaction is failing: {}. Bodies are still received and stored; the tables lag until it recovers.</p>",
            escape(error)
        );
    }
    if let Some(reason) = &overview.unseeded {
        let _ = writeln!(
            html,
            "<p class=\"alert unseeded\">Figures from before this start are missing: {}. They are counted from now on.</p>",
            escape(reason)
        );
    }
    if !overview.records_counted {
        html.push_str("<p class=\"note\">Still counting the records of the bodies received in the last 48 h before this start: record figures may be low.</p>\n");
    }
    html.push_str("</header>\n<main>\n");
    let mut institutions = overview
        .sources
        .chunk_by(|a, b| a.institution == b.institution);
    for sources in institutions.by_ref() {
        institution_table(&mut html, sources, now);
    }
    if overview.sources.is_empty() {
        html.push_str("<p>No institution is configured: add one under <code>[institutions]</code> in datx.toml.</p>\n");
    }
    let _ = writeln!(
        html,
        "</main>\n<footer>Reloads every {REFRESH_SECONDS} s. The same figures as JSON: <code>curl -H 'Accept: application/json' …/</code> or <code>datx status</code>. Hours are UTC clock hours; \"24 h\" is this hour and the 23 before it.</footer>\n</body>\n</html>"
    );
    html
}

/// The title: the worst state first, so a browser tab says it.
fn headline(overview: &Overview) -> String {
    let count = |state| overview.sources.iter().filter(|s| s.state == state).count();
    match (count(State::Silent), count(State::Late)) {
        (0, 0) => "all ok".to_string(),
        (silent, 0) => format!("{silent} silent"),
        (0, late) => format!("{late} late"),
        (silent, late) => format!("{silent} silent, {late} late"),
    }
}

fn institution_table(html: &mut String, sources: &[SourceStatus], now: DateTime<Utc>) {
    let institution = escape(&sources[0].institution);
    let every = match sources[0].expect_every_seconds {
        Some(seconds) => format!("expects a body every {}", ago(seconds as i64)),
        None => "not watched (expect_every = off)".to_string(),
    };
    let _ = writeln!(
        html,
        "<section data-institution=\"{institution}\">\n<h2>{institution} <span class=\"every\">{every}</span></h2>\n<table>\n<thead><tr><th>stream</th><th>state</th><th>last body</th><th>bodies 24 h</th><th>records 24 h</th><th>refused 24 h</th><th>rejects</th><th>not yet in tables</th><th>last commit</th><th>records per hour, 48 h</th></tr></thead>\n<tbody>"
    );
    for source in sources {
        source_row(html, source, now);
    }
    html.push_str("</tbody>\n</table>\n</section>\n");
}

fn source_row(html: &mut String, source: &SourceStatus, now: DateTime<Utc>) {
    let state = source.state.name();
    let _ = write!(
        html,
        "<tr class=\"source\" data-institution=\"{}\" data-stream=\"{}\" data-state=\"{state}\">",
        escape(&source.institution),
        source.stream
    );
    let _ = write!(
        html,
        "<td data-label=\"stream\" class=\"stream\">{}</td><td data-label=\"state\" class=\"state\"><span class=\"badge {state}\">{state}</span></td>",
        source.stream
    );
    match (source.last_body, source.last_body_age_seconds) {
        (Some(at), Some(age)) => {
            let _ = write!(
                html,
                "<td data-label=\"last body\" class=\"last-body\" data-value=\"{age:.3}\"><time datetime=\"{}\" title=\"{}\">{} ago</time></td>",
                at.to_rfc3339_opts(SecondsFormat::Millis, true),
                utc(at),
                ago(age as i64)
            );
        }
        _ => html.push_str(
            "<td data-label=\"last body\" class=\"last-body\" data-value=\"\">none in 2 days</td>",
        ),
    }
    number_cell(html, "bodies 24 h", "bodies", source.bodies_24h);
    number_cell(html, "records 24 h", "records", source.records_24h);
    let refusals = source.refusals_24h.clone().unwrap_or_default();
    let refused: u64 = refusals.values().sum();
    // Read as "2 × 401, 1 × 503"; in the attribute as "401:2 503:1".
    let (by_status, statuses): (Vec<String>, Vec<String>) = refusals
        .iter()
        .map(|(status, count)| (format!("{count} × {status}"), format!("{status}:{count}")))
        .unzip();
    let (by_status, statuses) = (by_status.join(", "), statuses.join(" "));
    let _ = write!(
        html,
        "<td data-label=\"refused 24 h\" class=\"refusals number\" data-value=\"{refused}\" data-statuses=\"{statuses}\">{}</td>",
        if refused == 0 {
            "0".to_string()
        } else {
            by_status
        }
    );
    match source.late_arrivals {
        0 => number_cell(html, "rejects", "rejects", source.rejects),
        late => {
            let _ = write!(
                html,
                "<td data-label=\"rejects\" class=\"rejects number\" data-value=\"{}\" data-late=\"{late}\">{} <span class=\"sub\" title=\"events stored in days already sealed, by a receiver whose clock was behind\">{}</span></td>",
                source.rejects,
                source.rejects,
                plural(late, "late arrival")
            );
        }
    }
    match (source.oldest_pending, source.oldest_pending_age_seconds) {
        (Some(oldest), Some(age)) => {
            let _ = write!(
                html,
                "<td data-label=\"not yet in tables\" class=\"pending\" data-value=\"{}\" data-oldest-seconds=\"{age:.3}\">{} <span class=\"sub\" title=\"{}\">oldest {} ago</span></td>",
                source.pending_events,
                plural(source.pending_events, "event"),
                utc(oldest),
                ago(age as i64)
            );
        }
        _ => html.push_str(
            "<td data-label=\"not yet in tables\" class=\"pending\" data-value=\"0\">none</td>",
        ),
    }
    match source.last_commit {
        Some(commit) => {
            let when = commit.committed_at.map_or_else(String::new, |at| {
                format!(
                    " <span class=\"sub\" title=\"{}\">{} ago</span>",
                    utc(at),
                    ago((now - at).num_seconds())
                )
            });
            let _ = write!(
                html,
                "<td data-label=\"last commit\" class=\"last-commit\" data-value=\"{0}\">#{0}{when}</td>",
                commit.version
            );
        }
        None => html.push_str(
            "<td data-label=\"last commit\" class=\"last-commit\" data-value=\"\">none</td>",
        ),
    }
    let _ = writeln!(
        html,
        "<td data-label=\"records per hour, 48 h\" class=\"chart\">{}</td></tr>",
        chart(&source.records_by_hour, now)
    );
}

fn number_cell(html: &mut String, label: &str, class: &str, value: u64) {
    let _ = write!(
        html,
        "<td data-label=\"{label}\" class=\"{class} number\" data-value=\"{value}\">{value}</td>"
    );
}

/// Bars of records per hour, the newest on the right, scaled to the busiest hour; each
/// bar's title names its hour and count.
fn chart(records_by_hour: &[u64], now: DateTime<Utc>) -> String {
    const BAR: usize = 4;
    const HEIGHT: u64 = 32;
    let width = records_by_hour.len() * BAR;
    let busiest = records_by_hour.iter().copied().max().unwrap_or(0);
    let total: u64 = records_by_hour.iter().sum();
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {HEIGHT}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{total} records in 48 hours, at most {busiest} in an hour\" data-values=\"{}\">",
        records_by_hour
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let _ = write!(
        svg,
        "<line x1=\"0\" y1=\"{0}\" x2=\"{width}\" y2=\"{0}\" stroke-width=\"1\"/>",
        HEIGHT as f64 - 0.5
    );
    let newest_hour = now.timestamp().div_euclid(3600);
    let oldest_hour = newest_hour - records_by_hour.len() as i64 + 1;
    for (i, &records) in records_by_hour.iter().enumerate() {
        if records == 0 {
            continue;
        }
        // At least a pixel for an hour that had any record.
        let height = (records * (HEIGHT - 1)).div_ceil(busiest).max(1);
        let hour = DateTime::from_timestamp((oldest_hour + i as i64) * 3600, 0)
            .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:00").to_string());
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\"><title>{hour} UTC: {}</title></rect>",
            i * BAR,
            HEIGHT - 1 - height,
            BAR - 1,
            plural(records, "record")
        );
    }
    svg.push_str("</svg>");
    svg
}

fn plural(count: u64, noun: &str) -> String {
    match count {
        1 => format!("1 {noun}"),
        _ => format!("{count} {noun}s"),
    }
}

fn utc(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration as an operator reads it: "45 s", "12 min", "3 h 5 min", "2 d 4 h".
pub fn ago(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min", seconds / 60),
        3600..86400 => match (seconds % 3600) / 60 {
            0 => format!("{} h", seconds / 3600),
            minutes => format!("{} h {minutes} min", seconds / 3600),
        },
        _ => match (seconds % 86400) / 3600 {
            0 => format!("{} d", seconds / 86400),
            hours => format!("{} d {hours} h", seconds / 86400),
        },
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_an_operator_says_them() {
        assert_eq!(ago(-3), "0 s");
        assert_eq!(ago(59), "59 s");
        assert_eq!(ago(900), "15 min");
        assert_eq!(ago(3600), "1 h");
        assert_eq!(ago(3 * 3600 + 5 * 60 + 9), "3 h 5 min");
        assert_eq!(ago(2 * 86400 + 4 * 3600), "2 d 4 h");
    }

    #[test]
    fn bars_scale_to_the_busiest_hour_and_skip_empty_ones() {
        let now = DateTime::from_timestamp(1000 * 3600 + 120, 0).unwrap();
        let svg = chart(&[0, 10, 5, 0], now);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("height=\"31\""), "{svg}");
        assert!(svg.contains("height=\"16\""), "{svg}");
        assert!(svg.contains("data-values=\"0,10,5,0\""));
        assert!(chart(&[0; 48], now).matches("<rect").count() == 0);
    }

    #[test]
    fn text_from_the_configuration_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
