// SPDX-License-Identifier: MIT
pragma solidity 0.8.37;

/// @title MockAggregator
/// @notice Chainlink-style price feed (AggregatorV3Interface subset) for tests.
/// Unpermissioned: anyone may set the answer. Tests only.
contract MockAggregator {
    uint8 public immutable decimals;

    uint80 internal latestRound;
    int256 internal latestAnswer;
    uint256 internal latestUpdatedAt;

    /// Starts with no round: latestRoundData() returns all zeros until an answer is set.
    constructor(uint8 decimals_) {
        decimals = decimals_;
    }

    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
    {
        // startedAt = updatedAt; answeredInRound = roundId.
        return (latestRound, latestAnswer, latestUpdatedAt, latestUpdatedAt, latestRound);
    }

    /// New round: roundId + 1, updatedAt = block.timestamp.
    function setAnswer(int256 answer) external {
        latestRound += 1;
        latestAnswer = answer;
        latestUpdatedAt = block.timestamp;
    }

    /// Sets the round outright, e.g. an old updatedAt for stale-answer tests.
    function setRound(uint80 roundId, int256 answer, uint256 updatedAt) external {
        latestRound = roundId;
        latestAnswer = answer;
        latestUpdatedAt = updatedAt;
    }
}
