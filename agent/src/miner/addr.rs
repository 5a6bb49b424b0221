//! Where a miner listens: `HOST[:PORT][,http=PORT]`.
//!
//! `PORT` is the dialect's primary API port (the cgminer-style 4028 for Antminer, Braiins, LuxOS
//! and Whatsminer v2; 4433 for Whatsminer v3; the HTTP port for Bitaxe). `http=` is the web API
//! port for Antminer and Braiins. A port that is not given takes the dialect's default, and only
//! then — so emulated miners on arbitrary ports are as reachable as real ones.

use std::fmt;
use std::str::FromStr;

use pivot_proto::model::MinerDialect;

/// A miner's address as given by an operator; ports left out are `None` until a dialect is known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MinerAddr {
    pub host: String,
    pub port: Option<u16>,
    pub http_port: Option<u16>,
}

impl MinerAddr {
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            http_port: None,
        }
    }

    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    #[must_use]
    pub fn with_http_port(mut self, port: u16) -> Self {
        self.http_port = Some(port);
        self
    }

    /// The primary API port for `dialect`: the one given, else the dialect's default.
    pub fn api_port(&self, dialect: MinerDialect) -> u16 {
        self.port.unwrap_or(match dialect {
            MinerDialect::Antminer
            | MinerDialect::Braiins
            | MinerDialect::Luxos
            | MinerDialect::WhatsminerV2 => 4028,
            MinerDialect::WhatsminerV3 => 4433,
            MinerDialect::Bitaxe => 80,
        })
    }

    /// The web API port (Antminer CGI, Braiins REST): the one given, else 80.
    pub fn web_port(&self) -> u16 {
        self.http_port.unwrap_or(80)
    }

    /// `host:port` for connecting, with IPv6 literals bracketed.
    pub fn socket(&self, port: u16) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }

    /// The host as a URL authority with `port`.
    pub fn http_base(&self, port: u16) -> String {
        format!("http://{}", self.socket(port))
    }
}

impl fmt::Display for MinerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written straight to `f` (no `socket` string): a reading names its miner every poll.
        match self.port {
            Some(p) if self.host.contains(':') && !self.host.starts_with('[') => {
                write!(f, "[{}]:{p}", self.host)?;
            }
            Some(p) => write!(f, "{}:{p}", self.host)?,
            None => f.write_str(&self.host)?,
        }
        if let Some(h) = self.http_port {
            write!(f, ",http={h}")?;
        }
        Ok(())
    }
}

/// A miner address that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid miner address `{input}`: {problem} (expected HOST[:PORT][,http=PORT])")]
pub struct AddrError {
    pub input: String,
    pub problem: String,
}

impl FromStr for MinerAddr {
    type Err = AddrError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |problem: &str| AddrError {
            input: input.to_owned(),
            problem: problem.to_owned(),
        };
        let port = |s: &str| -> Result<u16, AddrError> {
            match s.parse::<u16>() {
                Ok(0) | Err(_) => Err(err(&format!("`{s}` is not a port (1–65535)"))),
                Ok(p) => Ok(p),
            }
        };
        let mut parts = input.trim().split(',');
        let main = parts.next().unwrap_or_default().trim();
        if main.is_empty() {
            return Err(err("empty host"));
        }
        let (host, main_port) = if let Some(rest) = main.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(|| err("unclosed `[`"))?;
            match after.strip_prefix(':') {
                Some(p) => (h.to_owned(), Some(port(p)?)),
                None if after.is_empty() => (h.to_owned(), None),
                None => return Err(err("junk after `]`")),
            }
        } else if main.matches(':').count() > 1 {
            (main.to_owned(), None) // bare IPv6 literal
        } else if let Some((h, p)) = main.split_once(':') {
            (h.to_owned(), Some(port(p)?))
        } else {
            (main.to_owned(), None)
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(err("bad host"));
        }
        let mut addr = MinerAddr {
            host,
            port: main_port,
            http_port: None,
        };
        for extra in parts {
            let extra = extra.trim();
            match extra.split_once('=') {
                // `http=PORT`, or `http=HOST:PORT` as `pivot-sim miners` prints it (same host).
                Some(("http", p)) => {
                    let p = p.rsplit_once(':').map_or(p, |(_, port)| port);
                    addr.http_port = Some(port(p)?);
                }
                _ => return Err(err(&format!("unknown option `{extra}`"))),
            }
        }
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_forms_the_emulator_prints() {
        let a: MinerAddr = "127.0.0.1:14000,http=14001".parse().unwrap();
        let sim: MinerAddr = "127.0.0.1:14000,http=127.0.0.1:14001".parse().unwrap();
        assert_eq!(sim, a);
        assert_eq!(
            a,
            MinerAddr::new("127.0.0.1")
                .with_port(14000)
                .with_http_port(14001)
        );
        assert_eq!(a.to_string(), "127.0.0.1:14000,http=14001");
        let b: MinerAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(b.api_port(MinerDialect::WhatsminerV3), 4433);
        assert_eq!(b.api_port(MinerDialect::Luxos), 4028);
        assert_eq!(b.web_port(), 80);
        let c: MinerAddr = "[::1]:4028".parse().unwrap();
        assert_eq!(c.socket(4028), "[::1]:4028");
        let d: MinerAddr = "miner-12.site:4433".parse().unwrap();
        assert_eq!(
            d.api_port(MinerDialect::Antminer),
            4433,
            "a given port always wins"
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            ":4028",
            "h:0",
            "h:99999",
            "h,https=1",
            "h:12,http=x",
            "[::1",
            "a b",
        ] {
            assert!(bad.parse::<MinerAddr>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = s.parse::<MinerAddr>();
        }
    }
}
