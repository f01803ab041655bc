//! Counts by clock hour over the last two days, in a fixed ring: what the status page sums
//! for "24 h" and draws for "48 h", in memory that does not grow with traffic.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// Hours kept: the page's chart covers them, its 24-hour sums take the newest half.
pub const KEPT: usize = 48;

/// What happened to one source in one clock hour (UTC).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hour {
    /// Hours since the Unix epoch.
    pub hour: i64,
    /// Bodies stored as new events.
    pub bodies: u64,
    pub records: u64,
    /// Pushes refused, by HTTP status.
    pub refusals: BTreeMap<u16, u64>,
}

/// The hour of `at`, counted from the Unix epoch.
pub fn hour_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(3600)
}

/// The last `KEPT` hours of one source, each slot reused once its hour is gone.
#[derive(Debug, Clone)]
pub struct Hours {
    slots: Vec<Hour>,
}

impl Default for Hours {
    fn default() -> Hours {
        Hours {
            slots: vec![
                Hour {
                    hour: i64::MIN,
                    ..Hour::default()
                };
                KEPT
            ],
        }
    }
}

impl Hours {
    /// The slot of `at`'s hour, emptied if it held an older hour; `None` when `at` is
    /// older than the hour the slot already holds (more than two days before it).
    pub fn at(&mut self, at: DateTime<Utc>) -> Option<&mut Hour> {
        let hour = hour_of(at);
        let slot = &mut self.slots[hour.rem_euclid(KEPT as i64) as usize];
        if slot.hour < hour {
            *slot = Hour {
                hour,
                ..Hour::default()
            };
        }
        (slot.hour == hour).then_some(slot)
    }

    /// The `count` hours that end with `now`'s, oldest first; an hour with nothing kept is
    /// empty.
    pub fn last(&self, now: DateTime<Utc>, count: usize) -> Vec<Hour> {
        let newest = hour_of(now);
        let count = count.min(KEPT) as i64;
        (newest - count + 1..=newest)
            .map(|hour| {
                let slot = &self.slots[hour.rem_euclid(KEPT as i64) as usize];
                match slot.hour == hour {
                    true => slot.clone(),
                    false => Hour {
                        hour,
                        ..Hour::default()
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hour: i64, minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(hour * 3600 + minute * 60, 0).unwrap()
    }

    #[test]
    fn hours_are_kept_two_days_and_then_reused() {
        let mut hours = Hours::default();
        hours.at(at(1000, 5)).unwrap().bodies += 1;
        hours.at(at(1000, 55)).unwrap().bodies += 1;
        hours.at(at(1047, 0)).unwrap().records += 7;
        let last = hours.last(at(1047, 30), KEPT);
        assert_eq!(last.len(), KEPT);
        assert_eq!((last[0].hour, last[0].bodies), (1000, 2));
        assert_eq!((last[47].hour, last[47].records), (1047, 7));
        // Hour 1048 takes hour 1000's slot: 1000 is now more than two days back.
        hours.at(at(1048, 1)).unwrap().bodies += 1;
        let last = hours.last(at(1048, 1), KEPT);
        assert_eq!(last.iter().map(|h| h.bodies).sum::<u64>(), 1);
        // An hour older than its slot's is not counted.
        assert!(hours.at(at(1000, 59)).is_none());
        // Nothing kept for a quiet day: the hours are there, empty.
        let later = hours.last(at(2000, 0), 24);
        assert_eq!(later.len(), 24);
        assert!(later.iter().all(|h| h.bodies == 0 && h.records == 0));
        assert_eq!(later[23].hour, 2000);
    }
}
