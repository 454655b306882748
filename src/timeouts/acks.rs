//! Acknowledging due-queue deliveries with as few frames as their order allows.
//!
//! Batches are handled concurrently and finish in any order, so a multiple ack
//! ("everything up to tag N") is only safe when every delivery up to N is settled:
//! its effect committed, or already acked or nacked by the router. The ledger knows
//! which tags arrived and which are settled. A batch whose earlier deliveries are all
//! settled is acked with one multiple ack; otherwise each of its deliveries is acked on
//! its own, so a slow batch never holds back the acks of the others.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::broker::{ConsumerChannel, Delivery};

/// The settlement state of one channel's deliveries.
pub struct AckLedger {
    /// The channel the deliveries came on; delivery tags are per channel.
    channel: ConsumerChannel,
    /// Which tags arrived and which of them are settled.
    tags: Mutex<Tags>,
    /// Held while acks are written, so a multiple ack can never reach the broker before
    /// the single ack of a tag it covers (which would close the channel).
    writing: tokio::sync::Mutex<()>,
}

impl AckLedger {
    /// A ledger for deliveries consumed on `channel`.
    pub fn new(channel: ConsumerChannel) -> Self {
        Self {
            channel,
            tags: Mutex::new(Tags::default()),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Notes deliveries as they arrive, in the order they arrived.
    pub fn received<'a>(&self, deliveries: impl IntoIterator<Item = &'a Delivery>) {
        let mut tags = self.tags.lock().unwrap_or_else(PoisonError::into_inner);
        tags.received(deliveries.into_iter().map(|delivery| delivery.tag));
    }

    /// Acks `done`, whose effects are committed, after the router acked or nacked the
    /// deliveries tagged `routed` itself.
    pub async fn settle(&self, done: &[Delivery], routed: &[u64]) {
        let _writing = self.writing.lock().await;
        let done_tags: Vec<u64> = done.iter().map(|delivery| delivery.tag).collect();
        let ack = self
            .tags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .settle(&done_tags, routed);
        let result = match ack {
            Ack::Nothing => return,
            Ack::UpTo(last) => self.channel.ack_up_to(last).await,
            Ack::Each => {
                let acks = done.iter().map(Delivery::ack);
                futures_util::future::join_all(acks)
                    .await
                    .into_iter()
                    .find_map(Result::err)
                    .map_or(Ok(()), Err)
            }
        };
        if let Err(error) = result {
            // The channel died: the broker redelivers, and handling is idempotent.
            tracing::warn!(%error, deliveries = done.len(), "ack failed, the messages will be redelivered");
        }
    }
}

/// How a settled batch is acknowledged.
#[derive(Debug, PartialEq, Eq)]
enum Ack {
    /// Nothing of the batch needs an ack from us.
    Nothing,
    /// One multiple ack up to this tag: every earlier delivery is settled.
    UpTo(u64),
    /// One ack per delivery: an earlier one is still being handled.
    Each,
}

/// Tags received and not yet covered by a multiple ack: `true` once settled.
#[derive(Debug, Default)]
struct Tags(BTreeMap<u64, bool>);

impl Tags {
    fn received(&mut self, tags: impl IntoIterator<Item = u64>) {
        self.0.extend(tags.into_iter().map(|tag| (tag, false)));
    }

    /// Marks `done` and `routed` settled and says how to ack `done`; a multiple ack
    /// forgets every tag it covers.
    fn settle(&mut self, done: &[u64], routed: &[u64]) -> Ack {
        for tag in routed.iter().chain(done) {
            self.0.insert(*tag, true);
        }
        let Some(last) = done.iter().copied().max() else {
            return Ack::Nothing;
        };
        if self.0.range(..=last).all(|(_, settled)| *settled) {
            self.0 = self.0.split_off(&(last + 1));
            Ack::UpTo(last)
        } else {
            Ack::Each
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(range: std::ops::RangeInclusive<u64>) -> Tags {
        let mut tags = Tags::default();
        tags.received(range);
        tags
    }

    #[test]
    fn batches_settled_in_order_are_acked_with_one_multiple_ack_each() {
        let mut tags = received(1..=6);
        assert_eq!(tags.settle(&[1, 2, 3], &[]), Ack::UpTo(3));
        assert_eq!(tags.settle(&[4, 5, 6], &[]), Ack::UpTo(6));
        assert!(tags.0.is_empty());
    }

    #[test]
    fn a_batch_that_overtakes_an_earlier_one_is_acked_one_by_one() {
        let mut tags = received(1..=6);
        assert_eq!(tags.settle(&[4, 5, 6], &[]), Ack::Each);
        // The earlier batch may not cover 4..=6 again: they are acked already.
        assert_eq!(tags.settle(&[1, 2, 3], &[]), Ack::UpTo(3));
        assert_eq!(tags.0.len(), 3);
        tags.received(7..=7);
        assert_eq!(tags.settle(&[7], &[]), Ack::UpTo(7));
        assert!(tags.0.is_empty());
    }

    #[test]
    fn routed_deliveries_count_as_settled_but_are_never_the_acked_tag() {
        let mut tags = received(1..=4);
        assert_eq!(tags.settle(&[1, 2], &[3, 4]), Ack::UpTo(2));
        assert_eq!(tags.0.len(), 2);
        assert_eq!(tags.settle(&[], &[]), Ack::Nothing);
    }

    #[test]
    fn a_batch_with_an_unsettled_delivery_below_it_waits_for_nothing() {
        let mut tags = received(1..=3);
        assert_eq!(tags.settle(&[2, 3], &[]), Ack::Each);
        assert_eq!(tags.settle(&[], &[1]), Ack::Nothing);
    }
}
