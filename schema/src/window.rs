//! A sale's window: when purchases of an item may be made.

use crate::entity::items;

/// When a sale's purchases may be made, in epoch ms: from `starts_at_ms` (`None`: open) until
/// before `ends_at_ms` (`None`: no end). In Redis's item hash an open start or end is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleWindow {
    pub starts_at_ms: Option<i64>,
    pub ends_at_ms: Option<i64>,
}

impl SaleWindow {
    /// The window as Redis's item hash holds it, where 0 is an open start or end.
    pub fn from_hash(starts_at_ms: Option<i64>, ends_at_ms: Option<i64>) -> SaleWindow {
        let bound = |ms: Option<i64>| ms.filter(|ms| *ms > 0);
        SaleWindow {
            starts_at_ms: bound(starts_at_ms),
            ends_at_ms: bound(ends_at_ms),
        }
    }

    /// The start and end as Redis's item hash takes them: 0 for an open one.
    pub fn in_hash(&self) -> [i64; 2] {
        [self.starts_at_ms.unwrap_or(0), self.ends_at_ms.unwrap_or(0)]
    }

    /// Whether the sale has ended by `now_ms` (its end is not part of it).
    pub fn ended(&self, now_ms: i64) -> bool {
        self.ends_at_ms.is_some_and(|ends| now_ms >= ends)
    }

    /// Whether the sale has yet to start at `now_ms`.
    pub fn upcoming(&self, now_ms: i64) -> bool {
        self.starts_at_ms.is_some_and(|starts| now_ms < starts)
    }

    /// Whether purchases may be made at `now_ms`.
    pub fn live(&self, now_ms: i64) -> bool {
        !self.upcoming(now_ms) && !self.ended(now_ms)
    }

    /// Whether the end, when both are set, comes after the start.
    pub fn ends_after_start(&self) -> bool {
        match (self.starts_at_ms, self.ends_at_ms) {
            (Some(start), Some(end)) => end > start,
            _ => true,
        }
    }

    /// Ends the sale at `now_ms` unless it ended already; an upcoming start moves back to the end.
    pub fn end_at(&mut self, now_ms: i64) {
        if !self.ended(now_ms) {
            self.ends_at_ms = Some(now_ms);
        }
        if let (Some(start), Some(end)) = (self.starts_at_ms, self.ends_at_ms)
            && start > end
        {
            self.starts_at_ms = Some(end);
        }
    }
}

impl items::Model {
    /// The item's sale window.
    pub fn window(&self) -> SaleWindow {
        SaleWindow {
            starts_at_ms: self.starts_at_ms,
            ends_at_ms: self.ends_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(starts: Option<i64>, ends: Option<i64>) -> SaleWindow {
        SaleWindow {
            starts_at_ms: starts,
            ends_at_ms: ends,
        }
    }

    #[test]
    fn live_from_the_start_until_before_the_end() {
        let w = window(Some(5), Some(8));
        assert!(w.upcoming(4) && !w.live(4));
        assert!(w.live(5) && w.live(7));
        assert!(w.ended(8) && !w.live(8));
        assert!(window(None, None).live(i64::MIN));
    }

    #[test]
    fn the_hash_holds_an_open_start_or_end_as_zero() {
        assert_eq!(window(None, Some(8)).in_hash(), [0, 8]);
        assert_eq!(
            SaleWindow::from_hash(Some(0), Some(8)),
            window(None, Some(8))
        );
        assert_eq!(SaleWindow::from_hash(None, Some(0)), window(None, None));
    }

    #[test]
    fn ending_keeps_an_earlier_end_and_pulls_a_later_start_back() {
        let mut w = window(Some(5), Some(8));
        w.end_at(9);
        assert_eq!(w, window(Some(5), Some(8)));
        w.end_at(6);
        assert_eq!(w, window(Some(5), Some(6)));
        let mut upcoming = window(Some(10), None);
        upcoming.end_at(6);
        assert_eq!(upcoming, window(Some(6), Some(6)));
    }
}
