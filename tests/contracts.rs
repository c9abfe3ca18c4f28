//! The committed ABI and bytecode in `abi/` are what the Solidity source compiles to
//! with the pinned solc: a changed source without a recompile fails here.

use std::process::Command;

#[test]
fn committed_bytecode_matches_the_source() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/compile-contracts.sh");
    let out = Command::new("bash")
        .args([script, "--check"])
        .output()
        .expect("run compile-contracts.sh");
    assert!(
        out.status.success(),
        "abi/ is stale: run scripts/compile-contracts.sh\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_abi_json_binds_the_events_budgetd_follows() {
    let abi: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/abi/SpendingHook.json"
    )))
    .unwrap();
    let names: Vec<&str> = abi
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for name in ["SpendRecorded", "LimitsUpdated", "getConfig", "getSpendState"] {
        assert!(names.contains(&name), "{name} missing from abi/SpendingHook.json");
    }
}
