// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title TestSpendingHook
/// @notice Test fixture for budgetd: behaves like the SpendingHook ERC-7579 hook
/// module (same events, views and revert reasons), but spends are recorded through
/// the plain `spend*` entry points instead of a smart account's preCheck.
/// Unpermissioned on purpose: anyone may set limits or record spends. Tests only.
contract TestSpendingHook {
    event SpendRecorded(address indexed account, address indexed sessionKey, uint256 amount);
    event LimitsUpdated(address indexed account, uint256 perTxLimit, uint256 dailyLimit, uint256 cumulativeLimit);

    /// Per-account limits; 0 means unlimited.
    struct Config {
        uint256 perTxLimit;
        uint256 dailyLimit;
        uint256 cumulativeLimit;
        bool configured;
    }

    /// Spend counters. `day` is the UTC day (block.timestamp / 86400) that
    /// `dailySpent` belongs to; an older `day` means nothing was spent today.
    struct Counter {
        uint256 dailySpent;
        uint256 day;
        uint256 cumulativeSpent;
    }

    mapping(address => Config) internal configs;
    mapping(address => Counter) internal accountSpend;
    mapping(address => mapping(address => Counter)) internal sessionSpend;

    function setLimits(address account, uint256 perTx, uint256 daily, uint256 cumulative) external {
        configs[account] = Config(perTx, daily, cumulative, true);
        emit LimitsUpdated(account, perTx, daily, cumulative);
    }

    function spend(address account, address sessionKey, uint256 amount) external {
        _spend(account, sessionKey, amount);
    }

    /// Records `count` spends of `amount` in one transaction (for benchmarks).
    function spendMany(address account, address sessionKey, uint256 amount, uint256 count) external {
        for (uint256 i = 0; i < count; i++) {
            _spend(account, sessionKey, amount);
        }
    }

    function spendBatch(address[] calldata accounts, address[] calldata sessionKeys, uint256[] calldata amounts)
        external
    {
        require(accounts.length == sessionKeys.length && accounts.length == amounts.length, "Hook: length mismatch");
        for (uint256 i = 0; i < accounts.length; i++) {
            _spend(accounts[i], sessionKeys[i], amounts[i]);
        }
    }

    function getConfig(address account)
        external
        view
        returns (uint256 perTxLimit, uint256 dailyLimit, uint256 cumulativeLimit, bool configured)
    {
        Config storage c = configs[account];
        return (c.perTxLimit, c.dailyLimit, c.cumulativeLimit, c.configured);
    }

    /// Per (account, sessionKey) state. `dailySpent` is the session's spend of the
    /// current UTC day (0 if it last spent on an earlier day). `dailyResetTimestamp`
    /// is when that daily amount resets: the start of the next UTC day,
    /// (block.timestamp / 86400 + 1) * 86400.
    function getSpendState(address account, address sessionKey)
        external
        view
        returns (uint256 dailySpent, uint256 dailyResetTimestamp, uint256 cumulativeSpent)
    {
        Counter storage s = sessionSpend[account][sessionKey];
        uint256 today = block.timestamp / 86400;
        return (s.day == today ? s.dailySpent : 0, (today + 1) * 86400, s.cumulativeSpent);
    }

    /// Checks the account's limits against its account-wide counters, then counts
    /// the spend for the account and for the session key and emits SpendRecorded.
    function _spend(address account, address sessionKey, uint256 amount) internal {
        Config storage c = configs[account];
        Counter storage a = accountSpend[account];
        uint256 today = block.timestamp / 86400;
        uint256 accountDaily = a.day == today ? a.dailySpent : 0;

        require(c.perTxLimit == 0 || amount <= c.perTxLimit, "Hook: exceeds per-tx limit");
        require(c.dailyLimit == 0 || accountDaily + amount <= c.dailyLimit, "Hook: exceeds daily limit");
        require(c.cumulativeLimit == 0 || a.cumulativeSpent + amount <= c.cumulativeLimit, "Hook: exceeds cumulative limit");

        _count(a, today, amount);
        _count(sessionSpend[account][sessionKey], today, amount);
        emit SpendRecorded(account, sessionKey, amount);
    }

    function _count(Counter storage k, uint256 today, uint256 amount) internal {
        if (k.day != today) {
            k.day = today;
            k.dailySpent = 0;
        }
        k.dailySpent += amount;
        k.cumulativeSpent += amount;
    }
}
