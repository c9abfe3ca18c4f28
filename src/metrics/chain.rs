//! Chain sync metrics, from the watcher's [`SyncStatus`].

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter};

use super::{Metrics, counter, gauge, register};
use crate::chain::SyncStatus;

/// Chain sync metrics, registered on the first [`Metrics::observe_sync`], so a
/// daemon without a chain exports no chain series (and trips no chain alert).
pub(super) struct ChainMetrics {
    head: Gauge,
    synced: Gauge,
    confirmed: Gauge,
    behind: Gauge,
    connected: Gauge,
    held: Gauge,
    spend_events: IntCounter,
    reorgs: IntCounter,
    rpc_errors: IntCounter,
    reconnects: IntCounter,
    reorg_depth: Histogram,
}

impl Metrics {
    pub(super) fn chain(&self) -> &ChainMetrics {
        self.chain.get_or_init(|| {
            let r = &self.registry;
            let depth = HistogramOpts::new(
                "budgetd_reorg_depth_blocks",
                "Depth of reorgs that reached the store.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]);
            ChainMetrics {
                head: gauge(r, "budgetd_chain_head_block", "The node's latest block."),
                synced: gauge(
                    r,
                    "budgetd_chain_synced_block",
                    "Last block whose spends are posted.",
                ),
                confirmed: gauge(r, "budgetd_chain_confirmed_block", "head - confirmations."),
                behind: gauge(r, "budgetd_chain_blocks_behind", "head - synced."),
                connected: gauge(r, "budgetd_chain_connected", "1 while connected to the node."),
                held: gauge(r, "budgetd_held_spends", "Spends held back: valuation failed."),
                spend_events: counter(
                    r,
                    "budgetd_spend_events_total",
                    "Spend events posted or kept unbound.",
                ),
                reorgs: counter(
                    r,
                    "budgetd_reorgs_total",
                    "Reorgs deeper than the confirmation depth.",
                ),
                rpc_errors: counter(r, "budgetd_rpc_errors_total", "Failed RPC calls."),
                reconnects: counter(r, "budgetd_ws_reconnects_total", "Websocket reconnects."),
                reorg_depth: register(r, Histogram::with_opts(depth).expect("valid histogram")),
            }
        })
    }

    /// Takes in the watcher's status. Its totals grow the counters by what is new.
    ///
    /// The status only carries the count of reorgs and the deepest depth, so each new
    /// reorg is observed at `max_reorg_depth`: exact for one reorg per status, an
    /// upper bound when several arrive between two looks.
    pub fn observe_sync(&self, s: &SyncStatus) {
        let c = self.chain();
        let block = |g: &Gauge, v: Option<u64>| g.set(v.map_or(f64::NAN, |v| v as f64));
        block(&c.head, s.head);
        block(&c.synced, s.synced);
        block(&c.confirmed, s.confirmed);
        block(&c.behind, s.head.zip(s.synced).map(|(h, y)| h.saturating_sub(y)));
        c.connected.set(if s.connected { 1.0 } else { 0.0 });
        c.held.set(s.held_spends as f64);
        let mut last = self.last_sync.lock().unwrap_or_else(|p| p.into_inner());
        // A restarted watcher counts from zero again: saturating_sub adds nothing then.
        c.spend_events
            .inc_by(s.spend_events.saturating_sub(last.spend_events));
        c.rpc_errors.inc_by(s.rpc_errors.saturating_sub(last.rpc_errors));
        c.reconnects.inc_by(s.reconnects.saturating_sub(last.reconnects));
        let new_reorgs = s.reorgs.saturating_sub(last.reorgs);
        c.reorgs.inc_by(new_reorgs);
        for _ in 0..new_reorgs {
            c.reorg_depth.observe(s.max_reorg_depth as f64);
        }
        *last = s.clone();
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn sync_totals_become_counters() {
        let m = Metrics::new();
        let mut s = SyncStatus {
            confirmations: 2,
            head: Some(100),
            synced: Some(97),
            confirmed: Some(98),
            connected: true,
            spend_events: 5,
            reorgs: 1,
            max_reorg_depth: 3,
            ..Default::default()
        };
        m.observe_sync(&s);
        s.spend_events = 7;
        s.reorgs = 2;
        s.max_reorg_depth = 6;
        m.observe_sync(&s);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry().gather(), &mut out)
            .unwrap();
        let out = String::from_utf8(out).unwrap();
        for want in [
            "# TYPE budgetd_spend_events_total counter",
            "budgetd_spend_events_total 7",
            "budgetd_reorgs_total 2",
            "budgetd_rpc_errors_total 0",
            "budgetd_ws_reconnects_total 0",
            "budgetd_chain_blocks_behind 3",
            "budgetd_chain_connected 1",
            "budgetd_held_spends 0",
            "budgetd_reorg_depth_blocks_count 2",
            "budgetd_reorg_depth_blocks_sum 9",
        ] {
            assert!(out.contains(want), "missing `{want}` in:\n{out}");
        }
    }
}
