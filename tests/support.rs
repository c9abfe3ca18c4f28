//! Tests of the test harness itself: the anvil wrapper, the deployed hook, and the fault proxy.

mod common;

use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{Address, U256, address};
use alloy::providers::{DynProvider, Provider, ProviderBuilder, WsConnect};
use alloy::rpc::types::Filter;
use alloy::transports::TransportError;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use common::anvil::{Anvil, Hook};
use common::proxy::{Faults, Outcome, Proxy, RangeStyle, RateStyle};

const ACCOUNT: Address = address!("00000000000000000000000000000000000000aa");
const SESSION: Address = address!("00000000000000000000000000000000000000bb");
const TOO_MANY: &str = "query returned more than 10000 results";
const WAIT: Duration = Duration::from_secs(10);

fn units(n: u64) -> U256 {
    U256::from(n)
}

async fn ws_provider(url: &str) -> DynProvider {
    ProviderBuilder::new()
        .connect_ws(WsConnect::new(url))
        .await
        .expect("connect ws")
        .erased()
}

/// The (code, message, data) of a JSON-RPC error response.
fn error_of(err: TransportError) -> (i64, String, Option<Value>) {
    let resp = err
        .as_error_resp()
        .unwrap_or_else(|| panic!("not an error response: {err}"));
    let data = resp
        .data
        .as_ref()
        .map(|d| serde_json::from_str(d.get()).expect("error data json"));
    (resp.code, resp.message.to_string(), data)
}

async fn head_hash(anvil: &Anvil) -> (u64, alloy::primitives::B256) {
    let block = anvil
        .provider()
        .await
        .get_block_by_number(BlockNumberOrTag::Latest)
        .await
        .unwrap()
        .unwrap();
    (block.header.number, block.header.hash)
}

#[tokio::test]
async fn deploy_and_spend() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    assert_eq!(hook.address, address!("5FbDB2315678afecb367f032d93F642f64180aa3"));
    let mut last_block = 0;
    for amount in [1, 2, 3] {
        let receipt = hook.spend(ACCOUNT, SESSION, units(amount)).await;
        let block = receipt.block_number.unwrap();
        assert!(block > last_block);
        last_block = block;
    }
    assert_eq!(hook.cumulative(ACCOUNT, SESSION).await, units(6));
    hook.spend_many(ACCOUNT, SESSION, units(10), 4).await;
    hook.set_limits(ACCOUNT, units(100), units(0), units(0)).await;
    let (daily, reset, cumulative) = hook.spend_state(ACCOUNT, SESSION).await;
    assert_eq!((daily, cumulative), (units(46), units(46)));
    assert!(reset > U256::ZERO);
}

#[tokio::test]
async fn restart_keeps_block_number_and_state() {
    let mut anvil = Anvil::start();
    let port = anvil.port();
    let hook = Hook::deploy(&anvil).await;
    hook.spend(ACCOUNT, SESSION, units(5)).await;
    anvil.mine(7).await;
    let before = anvil.block_number().await;
    anvil.restart();
    assert_eq!(anvil.port(), port);
    assert_eq!(anvil.block_number().await, before);
    let hook = Hook::at(&anvil, hook.address).await;
    assert_eq!(hook.cumulative(ACCOUNT, SESSION).await, units(5));
    let receipt = hook.spend(ACCOUNT, SESSION, units(1)).await;
    assert_eq!(receipt.block_number, Some(before + 1));
    assert_eq!(hook.cumulative(ACCOUNT, SESSION).await, units(6));
}

#[tokio::test]
async fn snapshot_and_revert() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    let block = anvil.block_number().await;
    let id = anvil.snapshot().await;
    hook.spend(ACCOUNT, SESSION, units(9)).await;
    anvil.mine(3).await;
    assert!(anvil.revert(id).await);
    assert_eq!(anvil.block_number().await, block);
    assert_eq!(hook.cumulative(ACCOUNT, SESSION).await, U256::ZERO);
}

#[tokio::test]
async fn reorg_replaces_head() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    hook.spend(ACCOUNT, SESSION, units(1)).await;
    anvil.mine(3).await;
    let (number, hash) = head_hash(&anvil).await;
    anvil.reorg(2, json!([])).await;
    let (new_number, new_hash) = head_hash(&anvil).await;
    assert_eq!(new_number, number);
    assert_ne!(new_hash, hash);
    // A reorg may also put transactions into the new blocks.
    anvil
        .reorg(2, json!([[hook.spend_tx(ACCOUNT, SESSION, units(4)), 1]]))
        .await;
    assert_eq!(anvil.block_number().await, number);
    assert_eq!(hook.cumulative(ACCOUNT, SESSION).await, units(5));
}

#[tokio::test]
async fn manual_mining() {
    let anvil = Anvil::start_with(&["--no-mining"]);
    let hook = Hook::deploy(&anvil).await;
    let block = anvil.block_number().await;
    hook.send_no_wait(hook.spend_tx(ACCOUNT, SESSION, units(2))).await;
    assert_eq!(anvil.block_number().await, block);
    anvil.mine(1).await;
    assert_eq!(hook.cumulative(ACCOUNT, SESSION).await, units(2));
    anvil.set_automine(true).await;
    hook.spend(ACCOUNT, SESSION, units(1)).await;
    assert_eq!(anvil.block_number().await, block + 2);
}

#[tokio::test]
async fn proxy_get_logs_faults() {
    let anvil = Anvil::start();
    let hook = Hook::deploy(&anvil).await;
    hook.spend(ACCOUNT, SESSION, units(1)).await;
    anvil.mine(20).await;
    let proxy = Proxy::start(&anvil.ws_url()).await;
    proxy.faults().lock().unwrap().max_range = Some(10);
    let provider = ws_provider(&proxy.url()).await;
    let big = Filter::new().from_block(3).to_block(20);

    proxy.faults().lock().unwrap().range_style = RangeStyle::Infura;
    let infura = error_of(provider.get_logs(&big).await.unwrap_err());
    let data = json!({"from": "0x3", "to": "0xc", "limit": 10000});
    assert_eq!(infura, (-32005, TOO_MANY.into(), Some(data)));

    proxy.faults().lock().unwrap().range_style = RangeStyle::Alchemy;
    let (code, message, _) = error_of(provider.get_logs(&big).await.unwrap_err());
    assert_eq!(code, -32602);
    let suggested = message.rsplit_once('[').unwrap().1.trim_end_matches(']');
    let range: Vec<u64> = suggested
        .split(", ")
        .map(|q| u64::from_str_radix(q.trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert_eq!(range, [3, 12]);

    proxy.faults().lock().unwrap().range_style = RangeStyle::Plain;
    let plain = error_of(provider.get_logs(&big).await.unwrap_err());
    assert_eq!(plain, (-32000, TOO_MANY.into(), None));

    let logs = provider
        .get_logs(&Filter::new().from_block(0).to_block(9))
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    provider.get_logs(&Filter::new().from_block(0)).await.unwrap(); // to "latest": never injected

    let stats = proxy.stats();
    assert_eq!(stats.count("eth_getLogs"), 5);
    let outcomes: Vec<Outcome> = stats.get_logs.iter().map(|g| g.outcome).collect();
    assert_eq!(
        outcomes[..4],
        [
            Outcome::TooLarge,
            Outcome::TooLarge,
            Outcome::TooLarge,
            Outcome::Passed
        ]
    );
    assert_eq!(
        stats.resent_oversized(),
        [(Some(3), Some(20)), (Some(3), Some(20))]
    );
}

#[tokio::test]
async fn proxy_rate_limits_and_delay() {
    let anvil = Anvil::start();
    let proxy = Proxy::start(&anvil.ws_url()).await;
    let provider = ws_provider(&proxy.url()).await;
    proxy.set_faults(Faults {
        rate_limit: 1.0,
        ..Faults::default()
    });
    let (code, message, _) = error_of(provider.get_block_number().await.unwrap_err());
    assert_eq!((code, message.as_str()), (429, "Too Many Requests"));
    proxy.set_faults(Faults {
        rate_limit: 1.0,
        rate_style: RateStyle::LimitExceeded,
        ..Faults::default()
    });
    let (code, message, _) = error_of(provider.get_block_number().await.unwrap_err());
    assert_eq!((code, message.as_str()), (-32005, "limit exceeded"));

    proxy.set_faults(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let started = Instant::now();
    provider.get_block_number().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn proxy_splits_batches() {
    let anvil = Anvil::start();
    anvil.mine(20).await;
    let proxy = Proxy::start(&anvil.ws_url()).await;
    proxy.faults().lock().unwrap().max_range = Some(5);
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url()).await.unwrap();
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [{"fromBlock": "0x0", "toBlock": "0x10"}]},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_chainId", "params": []},
    ]);
    ws.send(Message::text(batch.to_string())).await.unwrap();
    let reply = timeout(WAIT, ws.next()).await.unwrap().unwrap().unwrap();
    let reply: Vec<Value> = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    let by_id = |id: u64| reply.iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(reply.len(), 2);
    assert_eq!(by_id(1)["error"]["code"], -32005);
    assert_eq!(by_id(2)["result"], "0x7a69");
}

#[tokio::test]
async fn proxy_subscriptions_and_disconnects() {
    let mut anvil = Anvil::start();
    let proxy = Proxy::start(&anvil.ws_url()).await;
    let provider = ws_provider(&proxy.url()).await;
    let mut heads = provider.subscribe_blocks().await.unwrap().into_stream();
    anvil.mine(1).await;
    let head = timeout(WAIT, heads.next())
        .await
        .expect("no newHeads through the proxy")
        .unwrap();
    assert_eq!(head.number, 1);

    // disconnect_all ends a client's connection.
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url()).await.unwrap();
    proxy.disconnect_all();
    assert_closed(&mut ws).await;

    // refuse: new connections fail until it is cleared.
    proxy.faults().lock().unwrap().refuse = true;
    assert!(tokio_tungstenite::connect_async(proxy.url()).await.is_err());
    proxy.faults().lock().unwrap().refuse = false;
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url()).await.unwrap();

    // When the upstream goes away, the client is closed too.
    anvil.stop();
    assert_closed(&mut ws).await;
    assert!(proxy.stats().connections >= 4);
}

async fn assert_closed<S>(ws: &mut S)
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match timeout(WAIT, ws.next()).await.expect("connection stayed open") {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            Some(Ok(_)) => continue,
        }
    }
}
