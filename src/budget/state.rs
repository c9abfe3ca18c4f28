//! A budget in memory and the seed's rules, as pure functions over it.
//!
//! The writer applies operations to these values inside a write transaction and
//! publishes them only after the commit; readers (`check`, `get`, `list`) see the last
//! committed state. Nothing here touches the store.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use num_bigint::{BigInt, BigUint};
use num_traits::Zero;

use super::amount::{Amount, SignedAmount};
use super::config::ppm_to_fraction;
use super::error::Error;
use super::types::{BudgetReport, BudgetStatus, TaskBudget};

/// Milliseconds since the Unix epoch: the engine's clock and stored time unit.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

/// [`Millis`] as a `DateTime`.
pub fn to_datetime(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Money a reservation holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// The amount held.
    pub amount: BigUint,
    /// When it stops holding by itself.
    pub expires_ms: Option<Millis>,
}

impl Hold {
    /// Live holds count toward `reserved`; expired ones are dead even before the
    /// sweeper deletes them, so `reserved` never depends on when a sweep ran.
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_ms.is_none_or(|t| t > now)
    }
}

/// A budget's committed state.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetState {
    /// The task id.
    pub task_id: String,
    /// The allocation.
    pub total: BigUint,
    /// Unit of every amount of the budget.
    pub unit: String,
    /// Sum of the entries.
    pub spent: BigUint,
    /// Lifecycle state.
    pub status: BudgetStatus,
    /// Agent-reported progress.
    pub progress: f64,
    /// Allocation time.
    pub created_ms: Millis,
    /// Last change.
    pub updated_ms: Millis,
    /// Number of entries.
    pub entry_count: u64,
    /// Sequence number of the next entry (entries of reverted chain spends leave gaps).
    pub next_seq: u64,
    /// Thresholds fired, in ppm, ascending.
    pub fired: Vec<u32>,
    /// Reservations by id, including expired ones not yet swept.
    pub holds: BTreeMap<String, Hold>,
}

impl BudgetState {
    /// A fresh active budget.
    pub fn new(task_id: String, total: BigUint, unit: String, now: Millis) -> Self {
        Self {
            task_id,
            total,
            unit,
            spent: BigUint::ZERO,
            status: BudgetStatus::Active,
            progress: 0.0,
            created_ms: now,
            updated_ms: now,
            entry_count: 0,
            next_seq: 0,
            fired: Vec::new(),
            holds: BTreeMap::new(),
        }
    }

    /// Sum of live reservations.
    pub fn reserved(&self, now: Millis) -> BigUint {
        self.holds
            .values()
            .filter(|h| h.is_live(now))
            .map(|h| &h.amount)
            .sum()
    }

    /// `total - spent - reserved`.
    pub fn remaining(&self, now: Millis) -> BigInt {
        BigInt::from(self.total.clone()) - BigInt::from(self.spent.clone()) - BigInt::from(self.reserved(now))
    }

    /// The seed's `Check`, without the risk assessor: closed, exhausted, then the hard
    /// limit.
    pub fn check(&self, amount: &BigUint, hard_limit: bool, now: Millis) -> Result<(), Error> {
        require_positive(amount)?;
        match self.status {
            BudgetStatus::Closed => return Err(Error::Closed),
            BudgetStatus::Exhausted => return Err(Error::Exhausted(self.task_id.clone())),
            BudgetStatus::Active => {}
        }
        if hard_limit {
            self.within(amount, self.remaining(now))?;
        }
        Ok(())
    }

    /// The seed's `Record` rules for an agent's spend. `released` is a reservation the
    /// record consumes, whose money counts as remaining.
    pub fn check_record(
        &self,
        amount: &BigUint,
        released: Option<&Hold>,
        hard_limit: bool,
        now: Millis,
    ) -> Result<(), Error> {
        require_positive(amount)?;
        if self.status == BudgetStatus::Closed {
            return Err(Error::Closed);
        }
        if hard_limit {
            let back = released.filter(|h| h.is_live(now)).map(|h| h.amount.clone());
            self.within(
                amount,
                self.remaining(now) + BigInt::from(back.unwrap_or_default()),
            )?;
        }
        Ok(())
    }

    /// The seed's `Reserve` rules: exceeding what remains is refused whatever the
    /// hard limit says.
    pub fn check_reserve(&self, amount: &BigUint, now: Millis) -> Result<(), Error> {
        require_positive(amount)?;
        if self.status == BudgetStatus::Closed {
            return Err(Error::Closed);
        }
        self.within(amount, self.remaining(now))
    }

    fn within(&self, amount: &BigUint, remaining: BigInt) -> Result<(), Error> {
        if BigInt::from(amount.clone()) > remaining {
            return Err(Error::Exceeded {
                need: amount.to_string(),
                remaining: remaining.to_string(),
            });
        }
        Ok(())
    }

    /// Adds a spend, marks the budget exhausted when nothing remains, and returns the
    /// thresholds (ppm) newly crossed and whether it became exhausted. Callers have
    /// validated; chain spends come here without validation, since they are facts.
    pub fn apply_spend(&mut self, amount: &BigUint, thresholds_ppm: &[u32], now: Millis) -> (Vec<u32>, bool) {
        self.spent += amount;
        self.entry_count += 1;
        self.next_seq += 1;
        self.updated_ms = now;
        let newly = self.crossed(thresholds_ppm);
        self.fired.extend(&newly);
        self.fired.sort_unstable();
        let exhausted = self.status == BudgetStatus::Active && self.remaining(now) <= BigInt::zero();
        if exhausted {
            self.status = BudgetStatus::Exhausted;
        }
        (newly, exhausted)
    }

    /// Thresholds reached by `spent / total` (reserved not counted) that have not fired.
    fn crossed(&self, thresholds_ppm: &[u32]) -> Vec<u32> {
        let scaled_spent = &self.spent * 1_000_000u32;
        thresholds_ppm
            .iter()
            .copied()
            .filter(|t| !self.fired.contains(t) && scaled_spent >= &self.total * *t)
            .collect()
    }

    /// Tokens per minute since allocation, truncated; zero before a millisecond passed.
    pub fn burn_rate(&self, now: Millis) -> BigUint {
        let elapsed = now.saturating_sub(self.created_ms);
        if elapsed <= 0 || self.spent.is_zero() {
            return BigUint::ZERO;
        }
        &self.spent * 60_000u32 / BigUint::from(elapsed as u64)
    }

    /// The close report.
    pub fn report(&self, now: Millis) -> BudgetReport {
        BudgetReport {
            task_id: self.task_id.clone(),
            total_budget: Amount(self.total.clone()),
            total_spent: Amount(self.spent.clone()),
            entry_count: self.entry_count,
            duration: now.saturating_sub(self.created_ms).saturating_mul(1_000_000),
            status: self.status,
        }
    }

    /// The public view at `now`.
    pub fn view(&self, now: Millis) -> TaskBudget {
        TaskBudget {
            task_id: self.task_id.clone(),
            total_budget: Amount(self.total.clone()),
            unit: self.unit.clone(),
            spent: Amount(self.spent.clone()),
            reserved: Amount(self.reserved(now)),
            remaining: SignedAmount(self.remaining(now)),
            status: self.status,
            progress: self.progress,
            entry_count: self.entry_count,
            alerts_fired: self.fired.iter().copied().map(ppm_to_fraction).collect(),
            created_at: to_datetime(self.created_ms),
            updated_at: to_datetime(self.updated_ms),
        }
    }
}

/// Amounts the engine accepts are above zero.
pub fn require_positive(amount: &BigUint) -> Result<(), Error> {
    if amount.is_zero() {
        return Err(Error::InvalidAmount("amount must be greater than zero".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &[u32] = &[500_000, 800_000, 950_000];

    fn budget(total: u32) -> BudgetState {
        BudgetState::new("t".into(), BigUint::from(total), "usdc".into(), 0)
    }

    #[test]
    fn seed_alert_example() {
        let mut b = budget(1000);
        let fired: Vec<_> = [500u32, 310, 10]
            .iter()
            .map(|&a| b.apply_spend(&BigUint::from(a), T, 1).0)
            .collect();
        assert_eq!(fired, vec![vec![500_000], vec![800_000], vec![]]);
    }

    #[test]
    fn several_thresholds_in_one_spend_fire_ascending() {
        let mut b = budget(1000);
        assert_eq!(b.apply_spend(&BigUint::from(960u32), T, 1).0, T.to_vec());
    }

    #[test]
    fn burn_rate_per_minute_truncated() {
        let mut b = budget(1000);
        assert_eq!(b.burn_rate(120_000), BigUint::ZERO);
        b.apply_spend(&BigUint::from(100u32), T, 1);
        assert_eq!(b.burn_rate(120_000), BigUint::from(50u32));
        assert_eq!(b.burn_rate(180_000), BigUint::from(33u32));
        assert_eq!(b.burn_rate(0), BigUint::ZERO);
    }

    #[test]
    fn expired_holds_do_not_count() {
        let mut b = budget(100);
        b.holds.insert(
            "r".into(),
            Hold {
                amount: BigUint::from(40u32),
                expires_ms: Some(10),
            },
        );
        assert_eq!(b.reserved(9), BigUint::from(40u32));
        assert_eq!(b.reserved(10), BigUint::ZERO);
    }
}
