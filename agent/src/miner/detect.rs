//! Which dialect answers at an address. The three wire protocols are tried at once — cgminer
//! JSON (`version`, then `get_version` for Whatsminer, whose build date tells API v2 from v3),
//! Whatsminer v3's length-prefixed JSON,
//! and AxeOS' `GET /api/system/info` — each on the given port or its own default, and the first
//! one that identifies itself wins, so a wrong guess costs no timeout.

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pivot_proto::model::MinerDialect;
use reqwest::Method;
use serde_json::{Value, json};

use super::cgminer::CgClient;
use super::cgminer::parse;
use super::http::{HttpClient, HttpRequest};
use super::transport::{Framing, Timeouts, exchange};
use super::{MinerAddr, MinerError};

/// Classifies a cgminer `version` reply's text.
pub fn classify_version(v: &Value) -> Option<MinerDialect> {
    let text = v.to_string().to_ascii_lowercase();
    if text.contains("luxminer") {
        Some(MinerDialect::Luxos)
    } else if text.contains("bosminer") || text.contains("braiins") {
        Some(MinerDialect::Braiins)
    } else if text.contains("btminer") || text.contains("whatsminer") {
        Some(MinerDialect::WhatsminerV2)
    } else if text.contains("antminer") || text.contains("bmminer") {
        Some(MinerDialect::Antminer)
    } else {
        None
    }
}

/// Which Whatsminer API a firmware build speaks. Firmware from November 2024 on keeps answering
/// the old plaintext reads on 4028 but takes commands only over API v3 on 4433; asic-rs 0.8.6
/// draws the line at builds dated 2024-11-01 and later (`firmwares/whatsminer` firmware.rs), and
/// so does this.
pub fn whatsminer_api(fw_ver: &str) -> MinerDialect {
    let date = fw_ver
        .split('.')
        .next()
        .filter(|d| d.len() == 8)
        .and_then(|d| d.parse::<u32>().ok());
    match date {
        Some(d) if d >= 20_241_101 => MinerDialect::WhatsminerV3,
        _ => MinerDialect::WhatsminerV2,
    }
}

async fn probe_cgminer(addr: &MinerAddr, t: Timeouts) -> Result<MinerDialect, String> {
    let cg = CgClient::new(addr.clone(), addr.api_port(MinerDialect::Antminer), t);
    let v = cg
        .raw(
            json!({ "command": "version" }).to_string().as_bytes(),
            "version",
        )
        .await
        .map_err(|e| e.to_string())?;
    if let Some(d) = classify_version(&v) {
        return Ok(d);
    }
    // Whatsminer answers its own `get_version` with Msg.fw_ver / api_ver.
    let w = cg
        .raw(
            json!({ "command": "get_version" }).to_string().as_bytes(),
            "get_version",
        )
        .await
        .map_err(|e| e.to_string())?;
    if let Some(fw) = w.pointer("/Msg/fw_ver").and_then(Value::as_str) {
        return Ok(whatsminer_api(fw));
    }
    if w.pointer("/Msg/api_ver").is_some() {
        return Ok(MinerDialect::WhatsminerV2);
    }
    Err(format!(
        "4028-style API answered but named no known firmware: {}",
        crate::miner::error::snippet(v.to_string().as_bytes())
    ))
}

async fn probe_v3(addr: &MinerAddr, t: Timeouts) -> Result<MinerDialect, String> {
    let body = json!({ "cmd": "get.device.info", "param": "miner" })
        .to_string()
        .into_bytes();
    let mut payload = (body.len() as u32).to_le_bytes().to_vec();
    payload.extend(body);
    let port = addr.api_port(MinerDialect::WhatsminerV3);
    let bytes = exchange(
        addr,
        port,
        &payload,
        Framing::LengthPrefixed,
        t,
        "get.device.info",
    )
    .await
    .map_err(|e| e.to_string())?;
    let v = parse::parse_reply(&bytes).map_err(|e| e.to_string())?;
    if v.get("code").is_some() && v.get("msg").is_some() {
        Ok(MinerDialect::WhatsminerV3)
    } else {
        Err("port answered, not as Whatsminer v3".into())
    }
}

async fn probe_bitaxe(addr: &MinerAddr, http: &HttpClient) -> Result<MinerDialect, String> {
    let port = addr.api_port(MinerDialect::Bitaxe);
    let reply = http
        .send_ok(
            addr,
            HttpRequest::new(Method::GET, port, "/api/system/info"),
        )
        .await
        .map_err(|e| e.to_string())?;
    let v = reply
        .json(addr, "GET /api/system/info")
        .map_err(|e| e.to_string())?;
    if v.get("hashRate").is_some() || v.get("ASICModel").is_some() {
        Ok(MinerDialect::Bitaxe)
    } else {
        Err("HTTP answered, not as AxeOS".into())
    }
}

/// Finds the dialect at `addr`.
///
/// # Errors
/// [`MinerError::NotDetected`] with what each probe saw.
pub async fn detect(
    addr: &MinerAddr,
    http: &HttpClient,
    t: Timeouts,
) -> Result<MinerDialect, MinerError> {
    let mut probes: FuturesUnordered<
        futures::future::BoxFuture<'_, (&str, Result<MinerDialect, String>)>,
    > = FuturesUnordered::new();
    probes.push(Box::pin(async move {
        ("cgminer", probe_cgminer(addr, t).await)
    }));
    probes.push(Box::pin(async move {
        ("whatsminer-v3", probe_v3(addr, t).await)
    }));
    probes.push(Box::pin(async move {
        ("axeos", probe_bitaxe(addr, http).await)
    }));
    let mut seen = Vec::new();
    while let Some((name, result)) = probes.next().await {
        match result {
            Ok(d) => return Ok(d),
            Err(e) => seen.push(format!("{name}: {e}")),
        }
    }
    Err(MinerError::NotDetected {
        addr: addr.to_string(),
        tried: seen.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_version_replies() {
        // LuxOS `version` (pyasic docs, rpc/luxminer.py): VERSION[0].LUXminer.
        let lux = parse::parse_text(r#"{"STATUS":[{"STATUS":"S","Code":22,"Msg":"LUXminer versions"}],"VERSION":[{"API":"3.7","LUXminer":"2024.5.1.0-0b1c5b1","Type":"Antminer S19"}]}"#).unwrap();
        assert_eq!(classify_version(&lux), Some(MinerDialect::Luxos));
        let bos = parse::parse_text(r#"{"STATUS":[{"STATUS":"S","Msg":"BOSminer versions"}],"VERSION":[{"BOSminer":"bosminer-plus-tuner 25.07"}]}"#).unwrap();
        assert_eq!(classify_version(&bos), Some(MinerDialect::Braiins));
        let am = parse::parse_text(r#"{"STATUS":[{"STATUS":"S"}],"VERSION":[{"BMMiner":"1.0.0","Type":"Antminer S19j Pro"}]}"#).unwrap();
        assert_eq!(classify_version(&am), Some(MinerDialect::Antminer));
        assert_eq!(
            classify_version(&json!({"VERSION":[{"CGMiner":"4.9"}]})),
            None
        );
    }

    #[test]
    fn whatsminer_builds_from_november_2024_speak_api_v3() {
        // Builds as asic-rs' captures and pyasic reports show them.
        assert_eq!(
            whatsminer_api("20230803.11.REL"),
            MinerDialect::WhatsminerV2
        );
        assert_eq!(whatsminer_api("20241031.1.REL"), MinerDialect::WhatsminerV2);
        assert_eq!(whatsminer_api("20241101.1.REL"), MinerDialect::WhatsminerV3);
        assert_eq!(
            whatsminer_api("20251209.16.Rel2"),
            MinerDialect::WhatsminerV3
        );
        assert_eq!(whatsminer_api("v1.4.0"), MinerDialect::WhatsminerV2);
    }
}
