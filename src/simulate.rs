//! `datx simulate`: S-360 as a venue's traffic looks, without an S-360 instance.
//!
//! Owns a small, self-consistent world per institution of `datx.toml` (contacts that
//! change, performances on the hour in the venue's zone, orders whose operations sell,
//! reserve and refund tickets, and gate checks of sold tickets) and S-360's way of sending
//! it: one push per stream every `--every`, bodies of at most 50 records, each with the
//! institution's credentials, and a refused body sent again at the next push (12 tries,
//! then given up, as S-360 does). `--backfill-since` first sends history day by day, as a
//! first-time synchronisation does. The same `--seed` gives the same records. It only
//! sends HTTP: it must never touch the lake.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::config::{Auth, Config};
use crate::stream::Stream;

/// S-360 sends a body again at each of its next 12 runs, then gives it up.
const TRIES: u32 = 12;
/// Records in one body at most, as S-360 sends them.
const BODY_RECORDS: usize = 50;
/// How much of a venue's day one push carries: S-360's own interval.
const PUSH_SPAN_MINUTES: i64 = 15;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("{0:?} is not an http:// or https:// URL")]
    Target(String),
    #[error("datx.toml has no institution to simulate")]
    NoInstitution,
    #[error("--institution {0}: datx.toml has no such institution")]
    UnknownInstitution(String),
}

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// `http://host/s360`, to which `/{stream}/{institution}` is added, or a template.
    pub to: String,
    pub every: Duration,
    pub seed: u64,
    /// Send the history from this day (00:00 in each venue's zone) up to `backfill_until`
    /// first, as a first-time synchronisation does.
    pub backfill_since: Option<NaiveDate>,
    /// The end of the history: now unless given (a fixed end makes a run repeatable).
    pub backfill_until: Option<DateTime<Utc>>,
    /// Live pushes to make after the history; `None` runs until stopped.
    pub pushes: Option<u64>,
    /// Institutions to simulate; empty for all of `datx.toml`.
    pub institutions: Vec<String>,
}

/// What a run sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SimulateSummary {
    pub bodies: u64,
    pub records: u64,
    /// Bodies answered with something other than 200 (each try counts).
    pub refused: u64,
    /// Bodies given up after 12 refusals.
    pub given_up: u64,
    /// Bodies refused and still waiting for a next push when the run ended (not sent).
    pub waiting: u64,
}

/// One institution's world.
struct Venue {
    code: String,
    zone: Tz,
    auth: Auth,
    rng: Rng,
    /// Which of 1,000 id ranges the venue draws from, so venues' ids do not meet.
    space: i64,
    /// Ids are drawn from one counter per venue, so each is new.
    next_id: i64,
    next_contact: i64,
    contacts: Vec<Contact>,
    /// Sold tickets not yet at the gate, by performance start.
    tickets: BTreeMap<DateTime<Utc>, Vec<Ticket>>,
    /// Sold movements that may be refunded.
    refundable: Vec<Ticket>,
    /// Bodies refused, to send again at the next push.
    retries: VecDeque<Pending>,
}

/// A body S-360 has not had accepted yet.
struct Pending {
    stream: Stream,
    body: Vec<u8>,
    records: usize,
    /// Refusals so far.
    tries: u32,
}

#[derive(Clone)]
struct Contact {
    number: String,
    id: i64,
    first: &'static str,
    last: &'static str,
    created: DateTime<Utc>,
    newsletter: bool,
}

#[derive(Clone)]
struct Ticket {
    sold: DateTime<Utc>,
    buyer: Option<String>,
    movement: i64,
    ticket: i64,
    barcode: String,
    amount: i64,
    performance: i64,
    start: DateTime<Utc>,
}

const FIRST_NAMES: [&str; 12] = [
    "Anna", "Luca", "Sofia", "Noah", "Emma", "Leon", "Mia", "Elias", "Lea", "David", "Laura",
    "Jonas",
];
const LAST_NAMES: [&str; 10] = [
    "Müller", "Meier", "Schmid", "Keller", "Weber", "Huber", "Rossi", "Dubois", "Martin", "Fischer",
];
const PRODUCTS: [(&str, &str, i64); 4] = [
    ("Evening Performance", "EVE", 6500),
    ("Matinee", "MAT", 4500),
    ("Guided Tour", "TOUR", 2000),
    ("Family Pass", "FAM", 9000),
];

/// A small deterministic generator (SplitMix64): the same seed gives the same world.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The records one stretch of a venue's day produced, by stream.
#[derive(Default)]
struct Activity {
    contacts: Vec<Value>,
    orders: Vec<Value>,
    checks: Vec<Value>,
}

impl Activity {
    fn extend(&mut self, other: Activity) {
        self.contacts.extend(other.contacts);
        self.orders.extend(other.orders);
        self.checks.extend(other.checks);
    }

    fn by_stream(self) -> [(Stream, Vec<Value>); 3] {
        [
            (Stream::Contacts, self.contacts),
            (Stream::Orders, self.orders),
            (Stream::TicketChecks, self.checks),
        ]
    }
}

fn instant(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.3f+00:00").to_string()
}

impl Venue {
    fn new(code: &str, zone: Tz, auth: Auth, seed: u64) -> Venue {
        // Everything a venue draws follows from the seed and its own code, so adding an
        // institution to datx.toml changes no other venue's records.
        let venue = code.bytes().fold(0xCBF2_9CE4_8422_2325u64, |hash, b| {
            (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        });
        let mut rng = Rng(seed ^ venue);
        let space = (rng.next() % 1_000) as i64;
        Venue {
            space,
            code: code.to_string(),
            zone,
            auth,
            rng,
            next_id: 10_000_000_000_000 + space * 1_000_000_000,
            next_contact: 3_000_000 + space * 10_000_000,
            contacts: Vec::new(),
            tickets: BTreeMap::new(),
            refundable: Vec::new(),
            retries: VecDeque::new(),
        }
    }

    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Live records take ids from the wall clock on: a run started again (with any seed)
    /// never sends an id or a contact number an earlier run sent for another record.
    fn go_live(&mut self, now: DateTime<Utc>) {
        let run = now.timestamp() * 1_000 + self.space;
        self.next_id = self.next_id.max(run * 1_000_000);
        self.next_contact = self.next_contact.max(run * 1_000);
    }

    /// The start of the performance on the hour after `at`, in the venue's zone, `days`
    /// ahead: performances run every hour, so the gates are busy whenever a demo runs.
    fn performance_after(&self, at: DateTime<Utc>, days: i64) -> (i64, DateTime<Utc>) {
        let local = at.with_timezone(&self.zone) + Span::days(days) + Span::hours(1);
        let hour = local
            .date_naive()
            .and_hms_opt(local.hour(), 0, 0)
            .expect("an hour of the day is a valid time");
        let start = self
            .zone
            .from_local_datetime(&hour)
            .earliest()
            .map_or(at + Span::hours(1), |t| t.with_timezone(&Utc));
        // One performance per venue and hour: its id follows from its start.
        (9_000_000_000 + start.timestamp() / 3600, start)
    }

    /// What happens at the venue in `[from, from + 15 min)`.
    fn stretch(&mut self, from: DateTime<Utc>) -> Activity {
        let mut activity = Activity::default();
        let at =
            |rng: &mut Rng| from + Span::seconds(rng.below(PUSH_SPAN_MINUTES as u64 * 60) as i64);
        for _ in 0..1 + self.rng.below(2) {
            // Contacts are kept in the order they were created.
            let created = at(&mut self.rng).max(self.contacts.last().map_or(from, |c| c.created));
            let contact = Contact {
                number: {
                    self.next_contact += 1;
                    self.next_contact.to_string()
                },
                id: self.id(),
                first: self.rng.pick(&FIRST_NAMES),
                last: self.rng.pick(&LAST_NAMES),
                created,
                newsletter: self.rng.chance(40),
            };
            activity.contacts.push(contact_record(&contact, created));
            self.contacts.push(contact);
        }
        // A contact changes: S-360 sends it whole again.
        if !self.contacts.is_empty() && self.rng.chance(50) {
            let i = self.rng.below(self.contacts.len() as u64) as usize;
            self.contacts[i].newsletter = !self.contacts[i].newsletter;
            let contact = self.contacts[i].clone();
            let updated = at(&mut self.rng).max(contact.created + Span::minutes(1));
            activity.contacts.push(contact_record(&contact, updated));
        }
        for _ in 0..1 + self.rng.below(4) {
            let created = at(&mut self.rng);
            let order = self.sale(created);
            activity.orders.push(order);
        }
        if !self.refundable.is_empty() && self.rng.chance(15) {
            let i = self.rng.below(self.refundable.len() as u64) as usize;
            let ticket = self.refundable.swap_remove(i);
            let created = at(&mut self.rng).max(ticket.sold + Span::minutes(1));
            activity.orders.push(self.refund(&ticket, created));
        }
        activity.checks = self.gate(from);
        activity
    }

    fn sale(&mut self, created: DateTime<Utc>) -> Value {
        let reservation = self.rng.chance(10);
        // A third are bought at the box office for the coming hour, the rest days ahead.
        let days = match self.rng.chance(30) {
            true => 0,
            false => 1 + self.rng.below(9) as i64,
        };
        let (performance, start) = self.performance_after(created, days);
        // Each performance is of one product.
        let (product, code, price) = PRODUCTS[performance as usize % PRODUCTS.len()];
        let quantity = 1 + self.rng.below(3) as i64;
        let kind = if reservation { "RESERVATION" } else { "SALE" };
        // A buyer among the contacts that existed by then.
        let known = self.contacts.partition_point(|c| c.created <= created);
        let contact = (known > 0).then(|| {
            self.contacts[self.rng.below(known as u64) as usize]
                .number
                .clone()
        });
        let mut movements = Vec::new();
        for _ in 0..quantity {
            let ticket = Ticket {
                sold: created,
                buyer: contact.clone(),
                movement: self.id(),
                ticket: self.id(),
                barcode: format!("{:024}", self.rng.next() % 10u64.pow(18)),
                amount: price,
                performance,
                start,
            };
            movements.push(json!({"movementId": ticket.movement, "type": kind,
                "ticketId": ticket.ticket, "barcode": ticket.barcode, "amount": price}));
            if !reservation {
                self.tickets.entry(start).or_default().push(ticket.clone());
                self.refundable.push(ticket);
            }
        }
        let total = price * quantity;
        let (order_id, operation_id) = (self.id(), self.id());
        json!({"orderDetailsData": {
            "orderId": order_id,
            "orderType": if reservation { "RESERVATION" } else { "SALE" },
            "orderState": if reservation { "OPEN" } else { "CLOSED" },
            "creationDateTime": instant(created),
            "referenceDate": instant(created),
            "saleAmount": if reservation { 0 } else { total },
            "preSaleAmount": 0,
            "reservationAmount": if reservation { total } else { 0 },
            "optionAmount": 0,
            "waitingAccountBalanceAmount": 0,
            "contactNumber": contact,
            "operationDatas": [{
                "operationId": operation_id, "kind": "SINGLE_ENTRY", "type": kind,
                "quantity": quantity, "basePrice": price, "unitPrice": price, "totalAmount": total,
                "productId": 10_228_231_108_000 + price, "product": product, "productCode": code,
                "performanceId": performance, "performance": format!("{product} {}", start.with_timezone(&self.zone).format("%Y-%m-%d %H:%M")),
                "eventId": 10_228_231_100_000i64, "audienceSubCategory": "Adulte", "vatRate": 770,
                "movementDatas": movements}],
            "paymentDatas": if reservation { json!([]) } else { json!([{"paymentId": self.id(),
                "method": "CREDIT_CARD", "state": "PAID", "amount": total, "currencyCode": "CHF",
                "paymentDate": instant(created)}]) },
        }})
    }

    fn refund(&mut self, ticket: &Ticket, created: DateTime<Utc>) -> Value {
        if let Some(tickets) = self.tickets.get_mut(&ticket.start) {
            tickets.retain(|t| t.movement != ticket.movement);
        }
        let (order_id, operation_id, movement, payment) =
            (self.id(), self.id(), self.id(), self.id());
        let (_, code, _) = PRODUCTS[ticket.performance as usize % PRODUCTS.len()];
        json!({"orderDetailsData": {
            "orderId": order_id, "orderType": "REFUND_CLIENT", "orderState": "CLOSED",
            "creationDateTime": instant(created), "referenceDate": instant(created),
            "saleAmount": -ticket.amount, "preSaleAmount": 0, "reservationAmount": 0,
            "optionAmount": 0, "waitingAccountBalanceAmount": 0,
            "contactNumber": ticket.buyer,
            "operationDatas": [{"operationId": operation_id, "kind": "SINGLE_ENTRY", "type": "REFUND",
                "quantity": -1, "unitPrice": ticket.amount, "totalAmount": -ticket.amount,
                "productId": 10_228_231_108_000 + ticket.amount, "productCode": code,
                "performanceId": ticket.performance, "eventId": 10_228_231_100_000i64,
                "movementDatas": [{"movementId": movement, "type": "REFUND",
                    "refundedMovementId": ticket.movement, "ticketId": ticket.ticket,
                    "amount": -ticket.amount}]}],
            "paymentDatas": [{"paymentId": payment, "method": "CREDIT_CARD", "state": "PAID",
                "amount": -ticket.amount, "currencyCode": "CHF", "paymentDate": instant(created)}],
        }})
    }

    /// Gate checks, within the stretch from `from`, of the tickets whose performance starts
    /// in the next 75 minutes (the gates open an hour and a quarter before): most pass
    /// once, a few try again and are refused.
    fn gate(&mut self, from: DateTime<Utc>) -> Vec<Value> {
        let due: Vec<DateTime<Utc>> = self
            .tickets
            .range(..from + Span::minutes(75))
            .map(|(start, _)| *start)
            .collect();
        let mut checks = Vec::new();
        for start in due {
            let tickets = self.tickets.remove(&start).unwrap_or_default();
            // Performances long past when the simulation resumes had their gates then.
            let past = start < from - Span::minutes(75);
            for ticket in tickets {
                self.refundable.retain(|t| t.movement != ticket.movement);
                if past || self.rng.chance(8) {
                    continue; // a no-show
                }
                let minutes_before = self.rng.below(45) as i64;
                // At the gate before the start, within this stretch, after the sale.
                let at = (start - Span::minutes(minutes_before))
                    .clamp(from, from + Span::minutes(PUSH_SPAN_MINUTES - 3))
                    .max(ticket.sold + Span::minutes(1));
                checks.push(self.check(&ticket, at, "OK", "NO_FAIL"));
                if self.rng.chance(5) {
                    let again = at + Span::minutes(2);
                    checks.push(self.check(&ticket, again, "FAIL", "NO_MORE_ENTRY_ALLOWED_TODAY"));
                }
            }
        }
        checks
    }

    fn check(&mut self, ticket: &Ticket, at: DateTime<Utc>, result: &str, reason: &str) -> Value {
        json!({"ticket_check_id": self.id(), "movement_id": ticket.movement,
            "ticket_id": ticket.ticket, "barcode": ticket.barcode,
            "access_time": at.with_timezone(&self.zone).format("%Y-%m-%d %H:%M:%S").to_string(),
            "check_flow": "IN", "result": result, "failure_reason": reason})
    }
}

fn contact_record(contact: &Contact, updated: DateTime<Utc>) -> Value {
    let email = format!(
        "{}.{}{}@example.org",
        contact.first.to_lowercase(),
        contact.last.to_lowercase(),
        contact.id % 1000
    );
    json!({"contactNumber": contact.number, "contactId": contact.id, "type": "INDIVIDUAL",
        "role": "PUBLIC", "creationDate": instant(contact.created),
        "lastUpdateDate": instant(updated),
        "individualContact": {"title": "MS", "firstName": contact.first,
            "lastName": contact.last, "languageCode": "de", "email": email},
        "addresses": [{"isMain": true, "street1": format!("{} Example Street", contact.id % 200),
            "zipCode": "8000", "town": "Zürich", "countryCode": "CH"}],
        "authorizations": [{"code": "NEWSLETTER", "value": contact.newsletter}],
        "hasWarning": false})
}

/// Runs the simulation: the history first (with `backfill_since`), then a push every
/// `every`, for `pushes` pushes or until the process is stopped.
pub async fn simulate(
    config: &Config,
    options: &SimulateOptions,
) -> Result<SimulateSummary, SimulateError> {
    if !(options.to.starts_with("http://") || options.to.starts_with("https://")) {
        return Err(SimulateError::Target(options.to.clone()));
    }
    for code in &options.institutions {
        if !config.institutions.contains_key(code) {
            return Err(SimulateError::UnknownInstitution(code.clone()));
        }
    }
    let mut venues: Vec<Venue> = config
        .institutions
        .iter()
        .filter(|(code, _)| options.institutions.is_empty() || options.institutions.contains(code))
        .map(|(code, institution)| {
            Venue::new(
                code,
                institution.timezone,
                institution.auth.clone(),
                options.seed,
            )
        })
        .collect();
    if venues.is_empty() {
        return Err(SimulateError::NoInstitution);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTP client with no TLS settings builds");
    let sender = Sender {
        client,
        to: options.to.clone(),
    };
    let mut summary = SimulateSummary::default();
    if let Some(since) = options.backfill_since {
        let until = options.backfill_until.unwrap_or_else(Utc::now);
        for venue in &mut venues {
            let midnight = since.and_hms_opt(0, 0, 0).expect("midnight exists");
            let mut day = venue
                .zone
                .from_local_datetime(&midnight)
                .earliest()
                .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc));
            let mut sent = SimulateSummary::default();
            while day < until {
                let mut activity = Activity::default();
                let mut from = day;
                // Whole stretches only: the history ends by `until`, never after it
                // (live pushes then carry the 15 minutes before each push).
                while from + Span::minutes(PUSH_SPAN_MINUTES) <= (day + Span::days(1)).min(until) {
                    activity.extend(venue.stretch(from));
                    from += Span::minutes(PUSH_SPAN_MINUTES);
                }
                let refused = sent.refused;
                sender.push(venue, activity, &mut sent).await;
                // What was refused goes again at the next run of S-360, --every later.
                if sent.refused > refused {
                    tokio::time::sleep(options.every).await;
                }
                day += Span::days(1);
            }
            tracing::info!(
                institution = venue.code,
                since = %since,
                bodies = sent.bodies,
                records = sent.records,
                refused = sent.refused,
                "sent the history, as a first-time synchronisation"
            );
            summary.add(&sent);
        }
    }
    for venue in &mut venues {
        venue.go_live(Utc::now());
    }
    let mut ticker = tokio::time::interval(options.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut push = 0;
    while options.pushes.is_none_or(|pushes| push < pushes) {
        ticker.tick().await;
        push += 1;
        let now = Utc::now();
        for venue in &mut venues {
            let mut sent = SimulateSummary::default();
            let activity = venue.stretch(now - Span::minutes(PUSH_SPAN_MINUTES));
            sender.push(venue, activity, &mut sent).await;
            tracing::info!(
                push,
                institution = venue.code,
                bodies = sent.bodies,
                records = sent.records,
                refused = sent.refused,
                waiting = venue.retries.len(),
                "pushed"
            );
            summary.add(&sent);
        }
    }
    summary.waiting = venues.iter().map(|v| v.retries.len() as u64).sum();
    Ok(summary)
}

impl SimulateSummary {
    fn add(&mut self, other: &SimulateSummary) {
        self.bodies += other.bodies;
        self.records += other.records;
        self.refused += other.refused;
        self.given_up += other.given_up;
    }
}

struct Sender {
    client: reqwest::Client,
    to: String,
}

impl Sender {
    /// One run of S-360 for a venue: the bodies refused last time, then the new records,
    /// per stream, in bodies of at most 50.
    async fn push(&self, venue: &mut Venue, activity: Activity, sent: &mut SimulateSummary) {
        let mut queue: VecDeque<Pending> = std::mem::take(&mut venue.retries);
        for (stream, records) in activity.by_stream() {
            for chunk in records.chunks(BODY_RECORDS) {
                queue.push_back(Pending {
                    stream,
                    body: serde_json::to_vec(chunk).expect("records serialise"),
                    records: chunk.len(),
                    tries: 0,
                });
            }
        }
        for mut pending in queue {
            if self.send(venue, &pending).await {
                sent.bodies += 1;
                sent.records += pending.records as u64;
                continue;
            }
            sent.refused += 1;
            pending.tries += 1;
            if pending.tries >= TRIES {
                sent.given_up += 1;
                tracing::warn!(
                    institution = venue.code,
                    stream = %pending.stream,
                    records = pending.records,
                    "a body was refused {TRIES} times and is given up, as S-360 gives it up"
                );
            } else {
                venue.retries.push_back(pending);
            }
        }
    }

    /// Whether the body was accepted (200).
    async fn send(&self, venue: &Venue, pending: &Pending) -> bool {
        let url = crate::replay::target_url(&self.to, pending.stream, &venue.code);
        let request = self.client.post(&url).body(pending.body.clone());
        let request = match &venue.auth {
            Auth::None => request,
            Auth::Basic { user, password } => request.basic_auth(user, Some(password)),
            Auth::ApiKey { header, key } => request.header(header.as_str(), key.as_str()),
        };
        match request.send().await {
            Ok(answer) if answer.status() == reqwest::StatusCode::OK => true,
            Ok(answer) => {
                tracing::warn!(
                    url,
                    status = answer.status().as_u16(),
                    "a body was refused; it goes again at the next push"
                );
                false
            }
            Err(e) => {
                tracing::warn!(url, error = %e, "a body got no answer; it goes again at the next push");
                false
            }
        }
    }
}
